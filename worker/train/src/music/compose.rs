//! Procedural compositions: a chord progression per style and mode, a melody over it, a bass
//! line, a drum groove and sections (intro, verse, chorus, build, drop, breakdown), so that every
//! word a caption says about the result is true by construction.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tutti_shared::prompt::Mode;

use super::grooves::{self, Intensity};
use super::theory::{chord, fold, midi, pitch_over, progressions};
use super::{Dynamics, Family, Note, Piece, Style, Track};

/// What a section plays.
#[derive(Debug, Clone, Copy)]
struct SectionPlan {
    name: &'static str,
    drums: Intensity,
    melody: bool,
    bass: bool,
    /// Velocity offset.
    lift: i32,
}

fn plan(name: &'static str) -> SectionPlan {
    let (drums, melody, bass, lift) = match name {
        "intro" => (Intensity::None, false, false, -12),
        "verse" => (Intensity::Light, true, true, -6),
        "chorus" => (Intensity::Full, true, true, 6),
        "build" => (Intensity::Roll, false, false, 0),
        "drop" => (Intensity::Full, true, true, 10),
        "breakdown" => (Intensity::None, true, false, -10),
        "bridge" => (Intensity::Light, true, true, -2),
        "outro" => (Intensity::Light, false, true, -12),
        _ => (Intensity::Full, true, true, 0),
    };
    SectionPlan {
        name,
        drums,
        melody,
        bass,
        lift,
    }
}

/// Section sequences a clip may show, per style (empty: no structure, the whole clip plays).
fn section_choices(style: Style) -> &'static [&'static [&'static str]] {
    match style {
        Style::Rock | Style::Pop => &[
            &[],
            &["intro", "verse"],
            &["verse", "chorus"],
            &["chorus"],
            &["bridge", "chorus"],
            &["chorus", "outro"],
        ],
        Style::LofiHipHop => &[
            &[],
            &["intro", "verse"],
            &["verse"],
            &["chorus"],
            &["verse", "outro"],
        ],
        Style::House | Style::Trap | Style::Techno => &[
            &[],
            &["build", "drop"],
            &["intro", "build"],
            &["drop"],
            &["breakdown", "build"],
            &["drop", "breakdown"],
            &["drop", "outro"],
        ],
        Style::Cinematic => &[
            &[],
            &["intro", "build"],
            &["build", "drop"],
            &["verse", "outro"],
        ],
        Style::Waltz | Style::Ambient | Style::Classical | Style::Folk | Style::Jazz => {
            &[&[], &["intro", "verse"], &["verse"], &["verse", "outro"]]
        }
    }
}

/// (harmony families, lead families, bass program choices, drums?) of a style.
fn palette(style: Style) -> (&'static [Family], &'static [Family], bool, bool) {
    use Family::*;
    match style {
        Style::Rock => (
            &[ElectricGuitar, Organ, Piano],
            &[ElectricGuitar, Organ, Piano, Flute],
            true,
            true,
        ),
        Style::LofiHipHop => (
            &[ElectricPiano, Piano, AcousticGuitar],
            &[Flute, Piano, ElectricGuitar, ElectricPiano],
            true,
            true,
        ),
        Style::House => (
            &[Piano, SynthPad, Organ],
            &[Piano, Flute, ElectricPiano, SynthPad],
            true,
            true,
        ),
        Style::Trap => (
            &[SynthPad, Piano, Strings],
            &[Piano, Flute, ElectricPiano],
            true,
            true,
        ),
        Style::Waltz => (
            &[Strings, Piano, AcousticGuitar],
            &[Flute, Strings, Piano],
            true,
            false,
        ),
        // Ambient, classical and folk have a bass too, each chord's root held through the bar:
        // with it madmom's key network hears minor renders in their key more often (ambient with
        // triads 56% -> 63%, classical and folk 74% -> 79%).
        Style::Ambient => (
            &[SynthPad, Strings, Organ],
            &[Piano, Flute, ElectricPiano],
            true,
            false,
        ),
        Style::Classical | Style::Folk => (&[Piano, Strings], &[Flute, Piano], true, false),
        Style::Pop => (
            &[Piano, ElectricGuitar, SynthPad, AcousticGuitar],
            &[Piano, Flute, ElectricPiano, ElectricGuitar],
            true,
            true,
        ),
        Style::Jazz => (
            &[Piano, ElectricPiano, Organ],
            &[Flute, Piano, ElectricGuitar],
            true,
            true,
        ),
        Style::Techno => (
            &[SynthPad, Organ],
            &[SynthPad, ElectricPiano, Piano],
            true,
            true,
        ),
        Style::Cinematic => (
            &[Strings, SynthPad, Piano],
            &[Strings, Flute, Piano],
            true,
            true,
        ),
    }
}

fn pick_track(rng: &mut ChaCha8Rng, family: Family, volume: u8) -> Track {
    let program = *family.programs().choose(rng).unwrap_or(&0);
    Track {
        family,
        program,
        volume,
    }
}

/// Composes `seconds` (plus a bar) of music in `style`.
pub fn compose(style: Style, rng: &mut ChaCha8Rng, seconds: f64) -> Piece {
    let mode = if rng.random_bool(0.5) {
        Mode::Major
    } else {
        Mode::Minor
    };
    let tonic: u8 = rng.random_range(0..12);
    let (lo, hi) = style.tempo_range();
    let bpm = rng.random_range(lo..=hi).round();
    let bpb: u32 = if style == Style::Waltz { 3 } else { 4 };
    let dynamics = match (style, rng.random_range(0..3)) {
        (Style::Ambient, _) => Dynamics::Soft,
        (_, 0) => Dynamics::Soft,
        (_, 1) => Dynamics::Medium,
        _ => Dynamics::Loud,
    };
    let base_vel: i32 = match dynamics {
        Dynamics::Soft => 58,
        Dynamics::Medium => 82,
        Dynamics::Loud => 106,
    };
    let bar_beats = bpb as f64;
    let clip_bars = seconds * bpm as f64 / 60.0 / bar_beats;
    let bars = clip_bars.ceil() as usize + 1;
    let choice = *section_choices(style).choose(rng).unwrap_or(&&[][..]);
    let split = ((clip_bars / 2.0).round() as usize).max(1);
    let sections: Vec<(usize, SectionPlan)> = match choice {
        [] => vec![(0, plan(""))],
        [one] => vec![(0, plan(one))],
        [a, b, ..] => vec![(0, plan(a)), (split, plan(b))],
    };

    let (harm_f, lead_f, has_bass, has_drums) = palette(style);
    let harm_family = *harm_f.choose(rng).unwrap_or(&Family::Piano);
    let mut tracks = vec![pick_track(rng, harm_family, 100)];
    let lead_choices: Vec<Family> = lead_f
        .iter()
        .copied()
        .filter(|f| *f != harm_family)
        .collect();
    let lead = (rng.random_bool(0.85) && !lead_choices.is_empty())
        .then(|| *lead_choices.choose(rng).unwrap_or(&Family::Flute));
    let lead_track = lead.map(|f| {
        tracks.push(pick_track(rng, f, 110));
        tracks.len() - 1
    });
    let bass_track = (has_bass && rng.random_bool(0.9)).then(|| {
        let program = match style {
            Style::House | Style::Trap | Style::Techno => 38,
            Style::Waltz | Style::Jazz | Style::Ambient | Style::Classical | Style::Folk => 32,
            _ => *[32u8, 33].choose(rng).unwrap_or(&33),
        };
        tracks.push(Track {
            family: Family::Bass,
            program,
            volume: 105,
        });
        tracks.len() - 1
    });
    let drum_track = (has_drums && rng.random_bool(0.92)).then(|| {
        tracks.push(Track {
            family: Family::Drums,
            program: 0,
            volume: 100,
        });
        tracks.len() - 1
    });

    let prog = *progressions(mode).choose(rng).unwrap_or(&[0, 3, 4, 0]);
    let chord_base = fold(48 + tonic as i32, 52, 63);
    let mel_base = chord_base + 12;
    let seventh =
        matches!(style, Style::LofiHipHop | Style::Ambient | Style::Jazz) || rng.random_bool(0.2);
    let mut notes = Vec::new();
    let mut mel_deg: i32 = *[0, 2, 4].choose(rng).unwrap_or(&0);
    let span = chord_span(style, bpb, clip_bars);
    let spans_per_bar = (bpb / span) as usize;
    for bar in 0..bars {
        let sec = sections
            .iter()
            .rev()
            .find(|(start, _)| *start <= bar)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| plan(""));
        let vel = base_vel + sec.lift;
        for half in 0..spans_per_bar {
            let b0 = bar as f64 * bar_beats + (half as u32 * span) as f64;
            let root = prog[(bar * spans_per_bar + half) % 4];
            let tones = chord(chord_base, mode, root, seventh && seventh_fits(mode, root));
            harmony(&mut notes, rng, style, 0, b0, span, &tones, vel - 8);
            if let (Some(t), true) = (lead_track, sec.melody) {
                let lift = if sec.name == "chorus" || sec.name == "drop" {
                    7
                } else {
                    0
                };
                mel_deg = melody(
                    &mut notes, rng, style, t, b0, span, mode, mel_base, root, mel_deg, lift, vel,
                );
            }
            if let (Some(t), true) = (bass_track, sec.bass || sec.name.is_empty()) {
                let bass_base = fold(36 + tonic as i32, 33, 44);
                let chord_tones = [0, 2, 4].map(|d| pitch_over(bass_base, mode, root + d, root));
                bass(&mut notes, rng, style, t, b0, span, chord_tones, vel);
            }
        }
        let b0 = bar as f64 * bar_beats;
        if let Some(t) = drum_track {
            let crash = sections.iter().any(|(s, _)| *s == bar);
            grooves::bar(&mut notes, rng, style, t, b0, bpb, vel, sec.drums, crash);
        }
    }
    let sections = if choice.is_empty() {
        Vec::new()
    } else {
        sections
            .iter()
            .map(|(s, p)| (*s as f64 * bar_beats, p.name.to_string()))
            .collect()
    };
    Piece {
        style,
        source: "procedural".into(),
        bpm,
        beats_per_bar: bpb,
        tonic,
        mode,
        dynamics,
        tracks,
        notes,
        sections,
    }
}

/// Slow styles whose harmony sustains each chord through its span (a pad, a held chord), and
/// whose bass and melody fit a half bar. (Trap holds its chords too, but its bass syncopates
/// across the bar and its tempo fits five bars in 10 s.)
fn holds_chords(style: Style) -> bool {
    matches!(
        style,
        Style::Ambient | Style::Classical | Style::Folk | Style::Cinematic
    )
}

/// Beats each chord of the progression lasts. A clip of fewer than five bars does not hear a
/// four-chord progression through, and two of the minor ones reach the dominant only in bar
/// four. Where chords are held, a short clip of 4/4 changes chord every half bar instead, so the
/// dominant and its return to the tonic fall inside it: madmom's key network then hears minor
/// ambient renders (60-90 BPM, 2.5-3.75 bars in 10 s) in their key 83% of the time instead of
/// 62%, classical and folk 93% instead of 79%.
fn chord_span(style: Style, bpb: u32, clip_bars: f64) -> u32 {
    if bpb == 4 && clip_bars < 5.0 && holds_chords(style) {
        2
    } else {
        bpb
    }
}

/// Whether the chord on `root` may take its seventh. In minor only the dominant does (V7, whose
/// leading tone pulls to the tonic): i7, iv7 and VI7 each hold a major triad of the key's own notes
/// (i7 = C Eb G Bb holds E-flat major), and with them madmom's key network heard minor ambient
/// renders in their key 30% of the time, with triads 56%, and minor lo-fi 78% against 87%.
fn seventh_fits(mode: Mode, root: i32) -> bool {
    mode == Mode::Major || root.rem_euclid(7) == 4
}

fn push(out: &mut Vec<Note>, track: usize, start: f64, dur: f64, pitch: i32, vel: i32) {
    out.push(Note {
        start,
        dur,
        pitch: midi(pitch),
        vel: vel.clamp(1, 127) as u8,
        track,
    });
}

/// The chord `tones` over one span of `beats` beats from beat `b0`.
#[allow(clippy::too_many_arguments)]
fn harmony(
    out: &mut Vec<Note>,
    rng: &mut ChaCha8Rng,
    style: Style,
    track: usize,
    b0: f64,
    beats: u32,
    tones: &[i32],
    vel: i32,
) {
    let held = beats as f64;
    let hits: Vec<(f64, f64)> = match style {
        Style::Rock => (0..beats * 2).map(|e| (e as f64 * 0.5, 0.45)).collect(),
        Style::Pop => (0..beats).map(|q| (q as f64, 0.9)).collect(),
        Style::LofiHipHop => vec![(0.0, 1.9), (grooves::swing(style, 2.5), 1.4)],
        Style::Jazz => vec![(0.0, 1.4), (grooves::swing(style, 2.5), 1.0)],
        Style::House | Style::Techno => {
            if rng.random_bool(0.5) {
                (0..4).map(|q| (q as f64 + 0.5, 0.3)).collect()
            } else {
                vec![(0.0, held)]
            }
        }
        Style::Waltz => (1..beats).map(|q| (q as f64, 0.8)).collect(),
        Style::Trap | Style::Ambient | Style::Classical | Style::Folk | Style::Cinematic => {
            vec![(0.0, held)]
        }
    };
    for (t, d) in hits {
        let v = vel + rng.random_range(-5..=5);
        for &p in tones {
            push(out, track, b0 + t, d, p, v);
        }
    }
}

/// The lead over one chord's span of `beats` beats; returns the scale degree it ends on.
#[allow(clippy::too_many_arguments)]
fn melody(
    out: &mut Vec<Note>,
    rng: &mut ChaCha8Rng,
    style: Style,
    track: usize,
    b0: f64,
    beats: u32,
    mode: Mode,
    base: i32,
    root: i32,
    mut deg: i32,
    lift: i32,
    vel: i32,
) -> i32 {
    let patterns: &[&[f64]] = match (style, beats) {
        (_, 2) => &[&[2.0], &[1.0, 1.0], &[1.5, 0.5]],
        (_, 3) => &[&[1.0, 1.0, 1.0], &[2.0, 1.0], &[1.5, 0.5, 1.0], &[3.0]],
        (Style::Ambient, _) => &[&[4.0], &[2.0, 2.0], &[3.0, 1.0]],
        (Style::Trap, _) | (Style::LofiHipHop, _) => &[
            &[0.75, 0.75, 0.5, 1.0, 1.0],
            &[1.0, 0.5, 0.5, 2.0],
            &[0.5, 0.5, 0.5, 0.5, 2.0],
            &[1.5, 0.5, 2.0],
        ],
        _ => &[
            &[1.0, 1.0, 1.0, 1.0],
            &[0.5, 0.5, 1.0, 2.0],
            &[1.5, 0.5, 1.0, 1.0],
            &[0.5, 0.5, 0.5, 0.5, 1.0, 1.0],
            &[2.0, 2.0],
        ],
    };
    let rhythm = *patterns.choose(rng).unwrap_or(&&[1.0][..]);
    let mut t = 0.0f64;
    for (i, &d) in rhythm.iter().enumerate() {
        if i == 0 || t.fract() == 0.0 {
            // Strong positions land on a chord tone near the current degree.
            let targets = [root, root + 2, root + 4, root + 7, root - 3];
            deg = *targets
                .iter()
                .min_by_key(|&&x| (x - deg).abs())
                .unwrap_or(&root);
        } else {
            deg += *[-2, -1, -1, 1, 1, 2].choose(rng).unwrap_or(&1);
        }
        deg = deg.clamp(-2, 11);
        if rng.random_bool(0.08) && i > 0 {
            t += d;
            continue; // a rest
        }
        let p = pitch_over(base, mode, deg, root) + if lift > 0 { 12 } else { 0 };
        let v = vel + rng.random_range(-6..=8) + if t == 0.0 { 6 } else { 0 };
        push(out, track, grooves::swing(style, b0 + t), d * 0.95, p, v);
        t += d;
    }
    deg
}

/// The bass under one chord's span of `beats` beats.
#[allow(clippy::too_many_arguments)]
fn bass(
    out: &mut Vec<Note>,
    rng: &mut ChaCha8Rng,
    style: Style,
    track: usize,
    b0: f64,
    beats: u32,
    [root, third, fifth]: [i32; 3],
    vel: i32,
) {
    let hits: Vec<(f64, f64, i32)> = match style {
        Style::Rock => (0..beats * 2)
            .map(|e| (e as f64 * 0.5, 0.45, root))
            .collect(),
        Style::LofiHipHop => vec![(0.0, 1.5, root), (1.75, 0.5, root), (2.5, 1.2, fifth - 12)],
        Style::House | Style::Techno => (0..4).map(|q| (q as f64 + 0.5, 0.4, root)).collect(),
        Style::Pop => (0..beats * 2)
            .map(|e| (e as f64 * 0.5, 0.45, root))
            .collect(),
        // Walking quarters: root, third, fifth, octave (a chord tone on every beat; the
        // chord's own third, so a minor chord's bass line stays minor).
        Style::Jazz => (0..beats)
            .map(|q| {
                (
                    q as f64,
                    0.9,
                    [root, third, fifth, root + 12][q as usize % 4],
                )
            })
            .collect(),
        Style::Trap => vec![
            (0.0, 1.4, root),
            (*[1.5, 2.5].choose(rng).unwrap_or(&2.5), 1.0, root),
        ],
        Style::Waltz => vec![(0.0, 0.9, root)],
        // A pedal: the root held through the bar.
        Style::Ambient | Style::Classical | Style::Folk => vec![(0.0, beats as f64 * 0.95, root)],
        _ if beats < 4 => vec![(0.0, beats as f64 * 0.9, root)],
        _ => vec![(0.0, beats as f64 * 0.9, root), (2.0, 1.8, fifth - 12)],
    };
    for (t, d, p) in hits {
        let v = vel + rng.random_range(-4..=4);
        push(out, track, grooves::swing(style, b0 + t), d, p, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng_for;

    fn minor_pieces(style: Style) -> impl Iterator<Item = Piece> {
        (0..200)
            .map(move |i| compose(style, &mut rng_for(3, 9, i), 10.0))
            .filter(|p| p.mode == Mode::Minor)
    }

    /// Minor chords carry a seventh only on the dominant, where it holds the leading tone.
    #[test]
    fn minor_harmony_takes_a_seventh_on_the_dominant_alone() {
        let mut sevenths = 0;
        for style in [Style::LofiHipHop, Style::Ambient, Style::Jazz] {
            for piece in minor_pieces(style) {
                let leading = (i32::from(piece.tonic) + 11) % 12;
                let mut chords: std::collections::BTreeMap<u64, Vec<i32>> = Default::default();
                for n in piece.notes.iter().filter(|n| n.track == 0) {
                    chords
                        .entry((n.start * 1000.0) as u64)
                        .or_default()
                        .push(i32::from(n.pitch) % 12);
                }
                for (_, pcs) in chords {
                    if pcs.len() == 4 {
                        sevenths += 1;
                        assert!(
                            pcs.contains(&leading),
                            "{style:?}: a seventh chord off V {pcs:?}"
                        );
                    } else {
                        assert_eq!(pcs.len(), 3, "{style:?} {pcs:?}");
                    }
                }
            }
        }
        assert!(sevenths > 0, "no dominant seventh at all");
    }

    /// Ambient, classical and folk pieces have a bass on each bar's chord root.
    #[test]
    fn slow_styles_have_a_bass_on_the_root() {
        for style in [Style::Ambient, Style::Classical, Style::Folk] {
            let pieces: Vec<Piece> = minor_pieces(style).collect();
            let with_bass: Vec<&Piece> = pieces
                .iter()
                .filter(|p| p.tracks.iter().any(|t| t.family == Family::Bass))
                .collect();
            assert!(
                with_bass.len() * 10 >= pieces.len() * 8,
                "{style:?}: bass in {} of {}",
                with_bass.len(),
                pieces.len()
            );
            for p in with_bass {
                let bass = p.tracks.iter().position(|t| t.family == Family::Bass);
                let lows: Vec<&Note> = p.notes.iter().filter(|n| Some(n.track) == bass).collect();
                assert!(!lows.is_empty(), "{style:?}: a bass track with no notes");
                // Every bass note sounds under a chord of the harmony with its pitch class.
                for n in lows {
                    let under = p.notes.iter().any(|h| {
                        h.track == 0
                            && (h.start - n.start).abs() < 1e-9
                            && h.pitch % 12 == n.pitch % 12
                    });
                    assert!(under, "{style:?}: bass {} off the chord", n.pitch);
                }
            }
        }
    }

    /// A short clip in a style of held chords hears the dominant and the tonic after it.
    #[test]
    fn short_slow_clips_reach_the_dominant_and_return_to_the_tonic() {
        let mut short = 0;
        for style in [
            Style::Ambient,
            Style::Classical,
            Style::Folk,
            Style::Cinematic,
        ] {
            for p in minor_pieces(style) {
                let clip_beats = 10.0 * f64::from(p.bpm) / 60.0;
                if clip_beats >= 5.0 * f64::from(p.beats_per_bar) {
                    continue;
                }
                short += 1;
                let leading = (i32::from(p.tonic) + 11) % 12;
                let tonic_triad = [0, 3, 7].map(|i| (i32::from(p.tonic) + i) % 12);
                let mut chords: std::collections::BTreeMap<u64, Vec<i32>> = Default::default();
                for n in p
                    .notes
                    .iter()
                    .filter(|n| n.track == 0 && n.start < clip_beats)
                {
                    chords
                        .entry((n.start * 1000.0) as u64)
                        .or_default()
                        .push(i32::from(n.pitch) % 12);
                }
                let chords: Vec<&Vec<i32>> = chords.values().collect();
                let dominant = chords.iter().position(|c| c.contains(&leading));
                let cadence = dominant.is_some_and(|d| {
                    chords[d + 1..]
                        .iter()
                        .any(|c| tonic_triad.iter().all(|t| c.contains(t)))
                });
                assert!(cadence, "{style:?} at {} BPM: no V-i in {chords:?}", p.bpm);
            }
        }
        assert!(short > 100, "only {short} short clips");
    }
}
