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

/// Pitches of the chord on `root` degree: triad, or seventh chord when `seventh`.
pub fn chord(base: i32, mode: Mode, root: i32, seventh: bool) -> Vec<i32> {
    let mut degs = vec![root, root + 2, root + 4];
    if seventh {
        degs.push(root + 6);
    }
    degs.into_iter()
        .map(|d| degree_pitch(base, mode, d))
        .collect()
}

/// Chord progressions (root degrees, 0-based) that keep the mode unambiguous: each starts on the
/// tonic chord or returns to it, so the key profile of the result agrees with the caption.
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
            [0, 5, 2, 6],
            [0, 3, 4, 0],
            [0, 6, 5, 6],
            [0, 3, 6, 2],
            [0, 5, 3, 4],
            [0, 3, 0, 6],
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
        assert_eq!(fold(30, 36, 47), 42);
    }
}
