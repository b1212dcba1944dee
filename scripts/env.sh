# Source me: the environment tutti's build and tests expect (made by scripts/setup).
# libtorch comes from the PyPI torch wheel in the project's venv (LIBTORCH_USE_PYTORCH=1); the
# binaries carry an rpath to its lib/ folder, so nothing needs LD_LIBRARY_PATH at run time.
export TUTTI_HOME="${TUTTI_HOME:-$HOME/.cache/tutti}"
export VIRTUAL_ENV="$TUTTI_HOME/venv"
case ":$PATH:" in *":$VIRTUAL_ENV/bin:"*) ;; *) export PATH="$VIRTUAL_ENV/bin:$PATH" ;; esac
export LIBTORCH_USE_PYTORCH=1
