//! Arrangement of corpus tunes: transposition (the mode stays the one music21 found), tempo,
//! instruments per voice, dynamics, and for single-voice tunes a bass line and chords that
//! harmonise each bar with the triad (I, IV or V) that fits its notes best; an optional light
//! drum groove that follows the meter.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tutti_shared::prompt::Mode;

use super::corpus::CorpusEntry;
use super::grooves::{self, Intensity};
use super::theory::{chord, degree_pitch, fold, midi, scale};
use super::{Dynamics, Family, Note, Piece, Style, Track};

const FOLK_SOURCES: &[&str] = &[
    "essenFolksong",
    "ryansMammoth",
    "airdsAirs",
    "oneills1850",
    "miscFolk",
    "nottingham",
];

/// Arranges a corpus tune; `None` when it has no notes in the first `seconds`.
pub fn arrange_corpus(
    entry: &CorpusEntry,
    notes: &[Note],
    rng: &mut ChaCha8Rng,
    seconds: f64,
) -> Option<Piece> {
    let style = if FOLK_SOURCES.iter().any(|s| entry.source.starts_with(s)) {
        Style::Folk
    } else {
        Style::Classical
    };
    let mode = if entry.mode == "minor" {
        Mode::Minor
    } else {
        Mode::Major
    };
    let (lo, hi) = style.tempo_range();
    let bpm = rng.random_range(lo..=hi).round();
    let beats = seconds * bpm as f64 / 60.0;
    // Skip a leading rest.
    let first = notes.iter().map(|n| n.start).fold(f64::INFINITY, f64::min);
    if !first.is_finite() {
        return None;
    }
    let offset =
        (first / entry.beats_per_bar.max(1) as f64).floor() * entry.beats_per_bar.max(1) as f64;
    let shift: i32 = rng.random_range(-5..=6);
    let tonic = (entry.tonic as i32 + shift).rem_euclid(12) as u8;
    let dynamics = [Dynamics::Soft, Dynamics::Medium, Dynamics::Loud][rng.random_range(0..3)];
    let vel_scale = match dynamics {
        Dynamics::Soft => 0.6,
        Dynamics::Medium => 0.85,
        Dynamics::Loud => 1.1,
    };
    let voices = notes.iter().map(|n| n.track).max().map_or(0, |m| m + 1);
    let mut kept: Vec<Note> = notes
        .iter()
        .filter(|n| n.start - offset < beats + 1.0 && n.start >= offset)
        .map(|n| Note {
            start: n.start - offset,
            pitch: midi(n.pitch as i32 + shift),
            vel: ((n.vel as f64 * vel_scale).round() as i32).clamp(20, 127) as u8,
            ..*n
        })
        .collect();
    if kept.iter().map(|n| n.start + n.dur).fold(0.0, f64::max) < beats * 0.6 {
        return None;
    }
    let lead_choices = [
        Family::Flute,
        Family::Piano,
        Family::Strings,
        Family::Organ,
        Family::AcousticGuitar,
        Family::ElectricPiano,
    ];
    let lead = *lead_choices.choose(rng).unwrap_or(&Family::Piano);
    let pick = |rng: &mut ChaCha8Rng, f: Family, volume| Track {
        family: f,
        program: *f.programs().choose(rng).unwrap_or(&0),
        volume,
    };
    let mut tracks = vec![pick(rng, lead, 110)];
    let bpb = entry.beats_per_bar.clamp(2, 6);
    if voices > 1 {
        // The lower voices share one family (a choir of strings, an organ, a piano...).
        let others: Vec<Family> = [
            Family::Strings,
            Family::Organ,
            Family::Piano,
            Family::AcousticGuitar,
        ]
        .into_iter()
        .filter(|f| *f != lead)
        .collect();
        let low = *others.choose(rng).unwrap_or(&Family::Strings);
        let t = pick(rng, low, 95);
        for v in 1..voices {
            let _ = v;
            tracks.push(t);
        }
    } else {
        let harm = *[
            Family::AcousticGuitar,
            Family::Piano,
            Family::Strings,
            Family::Organ,
        ]
        .iter()
        .filter(|f| **f != lead)
        .copied()
        .collect::<Vec<_>>()
        .choose(rng)
        .unwrap_or(&Family::Piano);
        tracks.push(pick(rng, harm, 90));
        tracks.push(Track {
            family: Family::Bass,
            program: *[32u8, 33].choose(rng).unwrap_or(&32),
            volume: 100,
        });
        harmonise(&mut kept, tonic, mode, bpb, beats);
    }
    if rng.random_bool(0.25) {
        tracks.push(Track {
            family: Family::Drums,
            program: 0,
            volume: 90,
        });
        let t = tracks.len() - 1;
        let vel = (85.0 * vel_scale) as i32;
        let mut b = 0.0;
        while b < beats + 1.0 {
            grooves::bar(
                &mut kept,
                rng,
                style,
                t,
                b,
                bpb,
                vel,
                Intensity::Full,
                false,
            );
            b += bpb as f64;
        }
    }
    Some(Piece {
        style,
        source: entry.source.clone(),
        bpm,
        beats_per_bar: bpb,
        tonic,
        mode,
        dynamics,
        tracks,
        notes: kept,
        sections: Vec::new(),
    })
}

/// Adds chords (track 1) and a bass line (track 2) under a melody (track 0): per bar the triad on
/// I, IV or V that holds most of the bar's melody notes (ties go to I).
fn harmonise(notes: &mut Vec<Note>, tonic: u8, mode: Mode, bpb: u32, beats: f64) {
    let s = scale(mode);
    let base = fold(48 + tonic as i32, 50, 61);
    let bass_base = fold(36 + tonic as i32, 33, 44);
    let bars = (beats / bpb as f64).ceil() as usize + 1;
    let vel = notes.iter().map(|n| n.vel as i32).sum::<i32>() / notes.len().max(1) as i32;
    let mut add = Vec::new();
    for bar in 0..bars {
        let (b0, b1) = (bar as f64 * bpb as f64, (bar + 1) as f64 * bpb as f64);
        let pcs: Vec<i32> = notes
            .iter()
            .filter(|n| n.track == 0 && n.start >= b0 && n.start < b1)
            .map(|n| (n.pitch as i32 - tonic as i32).rem_euclid(12))
            .collect();
        let fit = |root: i32| {
            let tones: Vec<i32> = [root, root + 2, root + 4]
                .iter()
                .map(|d| s[(d % 7) as usize])
                .collect();
            pcs.iter().filter(|p| tones.contains(p)).count()
        };
        let root = [0, 3, 4]
            .into_iter()
            .max_by_key(|&r| (fit(r), r == 0))
            .unwrap_or(0);
        for p in chord(base, mode, root, false) {
            add.push(Note {
                start: b0,
                dur: bpb as f64 * 0.95,
                pitch: midi(p),
                vel: (vel - 20).max(20) as u8,
                track: 1,
            });
        }
        add.push(Note {
            start: b0,
            dur: bpb as f64 * 0.9,
            pitch: midi(degree_pitch(bass_base, mode, root)),
            vel: (vel - 10).max(20) as u8,
            track: 2,
        });
    }
    notes.extend(add);
}
