//! The fixed evaluation prompts. None is a training caption; "sorrowful", "chill" and
//! "energetic" never occur in training captions at all (the text encoder must generalise).

pub const PROMPTS: &[&str] = &[
    "upbeat rock with electric guitar, bass and drums, 140 BPM, in E major",
    "melancholic lo-fi hip hop with electric piano and drums, 75 BPM, in A minor",
    "house with synth pad, bass and drums, 124 BPM, in F minor",
    "dark trap beat with piano and drums, 150 BPM, in C# minor",
    "peaceful waltz with strings, 100 BPM, in D major",
    "ambient soundscape with synth pad, in G major",
    "sorrowful flute melody, 70 BPM, in B minor",
    "chill lo-fi beat with piano, 85 BPM",
    "energetic rock with organ and drums, 160 BPM, in A major",
    "folk tune with acoustic guitar and flute, 110 BPM, in G major",
    "classical piece with strings and piano, 90 BPM, in D minor",
    "joyful house track with piano, 126 BPM, in Bb major",
    "sorrowful strings, in E minor",
    "energetic house with organ, 128 BPM",
    "chill ambient music with electric piano, 65 BPM, in C major",
    "intense trap with strings and drums, 145 BPM, in G minor",
];
