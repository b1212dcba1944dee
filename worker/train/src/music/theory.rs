//! Scales, chords and progressions in scale degrees.

use tutti_shared::prompt::Mode;

const MAJOR: [i32; 7] = [0, 2, 4, 5, 7, 9, 11];
const MINOR: [i32; 7] = [0, 2, 3, 5, 7, 8, 10];

/// Semitone offsets of the scale from its tonic.
pub fn scale(mode: Mode) -> &'static [i32; 7] {
    match mode {
        Mode::Major => &MAJOR,
        Mode::Minor => &MINOR,
    }
}

/// MIDI pitch of scale degree `degree` (any integer, octaves wrap) above `base` (the tonic's
/// MIDI pitch in the reference octave).
pub fn degree_pitch(base: i32, mode: Mode, degree: i32) -> i32 {
    let s = scale(mode);
    let oct = degree.div_euclid(7);
    base + 12 * oct + s[degree.rem_euclid(7) as usize]
}

/// MIDI pitch of scale degree `degree` sounding over the chord on `root`: in minor, over the
/// dominant (V), the seventh degree is raised to the leading tone (harmonic minor), the note that
/// pulls to the tonic and makes a minor key heard as minor rather than as its relative major.
pub fn pitch_over(base: i32, mode: Mode, degree: i32, root: i32) -> i32 {
    let leading = mode == Mode::Minor && root.rem_euclid(7) == 4 && degree.rem_euclid(7) == 6;
    degree_pitch(base, mode, degree) + i32::from(leading)
}

/// Pitches of the chord on `root` degree: triad, or seventh chord when `seventh`. In minor the
/// dominant is major (V, V7), as in harmonic minor.
pub fn chord(base: i32, mode: Mode, root: i32, seventh: bool) -> Vec<i32> {
    let mut degs = vec![root, root + 2, root + 4];
    if seventh {
        degs.push(root + 6);
    }
    degs.into_iter()
        .map(|d| pitch_over(base, mode, d, root))
        .collect()
}

/// Chord progressions (root degrees, 0-based) that establish the tonic: each opens on the tonic
/// chord, and in minor each reaches the major dominant (V, with the leading tone) and spends at
/// most one bar on a major chord of the key's own notes (III, VI, VII are the relative major's
/// I, IV, V: with them, madmom's key network heard 45% of minor renders as a major key), so
/// that what is heard is the minor key and not its relative major.
pub fn progressions(mode: Mode) -> &'static [[i32; 4]] {
    match mode {
        Mode::Major => &[
            [0, 4, 5, 3],
            [0, 3, 4, 3],
            [0, 5, 3, 4],
            [0, 3, 0, 4],
            [0, 1, 4, 0],
            [0, 3, 5, 4],
        ],
        Mode::Minor => &[
            [0, 3, 4, 0],
            [0, 0, 3, 4],
            [0, 4, 0, 4],
            [0, 3, 0, 4],
            [0, 1, 4, 0],
            [0, 5, 4, 0],
        ],
    }
}

/// Transposes a MIDI pitch into `[lo, hi]` by octaves.
pub fn fold(pitch: i32, lo: i32, hi: i32) -> i32 {
    let mut p = pitch;
    while p < lo {
        p += 12;
    }
    while p > hi {
        p -= 12;
    }
    p
}

/// A valid MIDI pitch.
pub fn midi(pitch: i32) -> u8 {
    pitch.clamp(0, 127) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degrees_and_chords() {
        assert_eq!(degree_pitch(60, Mode::Major, 7), 72);
        assert_eq!(degree_pitch(60, Mode::Minor, 2), 63);
        assert_eq!(degree_pitch(60, Mode::Major, -1), 59);
        assert_eq!(chord(57, Mode::Minor, 0, false), vec![57, 60, 64]);
        // A minor's dominant is E major (G#, the leading tone), not E minor.
        assert_eq!(chord(57, Mode::Minor, 4, false), vec![64, 68, 71]);
        assert_eq!(chord(57, Mode::Minor, 4, true), vec![64, 68, 71, 74]);
        assert_eq!(pitch_over(57, Mode::Minor, 6, 0), 67);
        assert_eq!(
            pitch_over(57, Mode::Major, 6, 4),
            degree_pitch(57, Mode::Major, 6)
        );
        assert_eq!(fold(30, 36, 47), 42);
    }
}
