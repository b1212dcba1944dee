//! The protobuf enums <-> the domain's (`tutti_shared`), in one place: the coordinator and the
//! CLI convert through these (proto3 enums arrive as `i32`; `try_from` them first).

use tutti_shared::job::{AudioFormat, JobState, Priority, SamplerKind, Stage};

use crate::v1 as pb;

impl From<SamplerKind> for pb::Sampler {
    fn from(s: SamplerKind) -> Self {
        match s {
            SamplerKind::FlowEuler => pb::Sampler::FlowEuler,
            SamplerKind::Ddim => pb::Sampler::Ddim,
            SamplerKind::DpmSolverPp2m => pb::Sampler::DpmSolverPp2m,
            SamplerKind::CosineDpmSolverPp2m => pb::Sampler::CosineDpmSolverPp2m,
            SamplerKind::CosineDpmSolverPp2mSde => pb::Sampler::CosineDpmSolverPp2mSde,
            SamplerKind::PingPong => pb::Sampler::PingPong,
        }
    }
}

/// `None` for `SAMPLER_UNSPECIFIED` (the model's default).
impl From<pb::Sampler> for Option<SamplerKind> {
    fn from(s: pb::Sampler) -> Self {
        Some(match s {
            pb::Sampler::Unspecified => return None,
            pb::Sampler::FlowEuler => SamplerKind::FlowEuler,
            pb::Sampler::Ddim => SamplerKind::Ddim,
            pb::Sampler::DpmSolverPp2m => SamplerKind::DpmSolverPp2m,
            pb::Sampler::CosineDpmSolverPp2m => SamplerKind::CosineDpmSolverPp2m,
            pb::Sampler::CosineDpmSolverPp2mSde => SamplerKind::CosineDpmSolverPp2mSde,
            pb::Sampler::PingPong => SamplerKind::PingPong,
        })
    }
}

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }
}

/// `None` for `JOB_STATE_UNSPECIFIED` (any state, in a filter).
impl From<pb::JobState> for Option<JobState> {
    fn from(s: pb::JobState) -> Self {
        Some(match s {
            pb::JobState::Unspecified => return None,
            pb::JobState::Queued => JobState::Queued,
            pb::JobState::Running => JobState::Running,
            pb::JobState::Succeeded => JobState::Succeeded,
            pb::JobState::Failed => JobState::Failed,
            pb::JobState::Cancelled => JobState::Cancelled,
        })
    }
}

impl From<Stage> for pb::Stage {
    fn from(s: Stage) -> Self {
        match s {
            Stage::Queued => pb::Stage::Queued,
            Stage::Denoise => pb::Stage::Denoise,
            Stage::Vocode => pb::Stage::Vocode,
            Stage::Done => pb::Stage::Done,
        }
    }
}

impl From<AudioFormat> for pb::AudioFormat {
    fn from(f: AudioFormat) -> Self {
        match f {
            AudioFormat::Wav => pb::AudioFormat::Wav,
            AudioFormat::Flac => pb::AudioFormat::Flac,
            AudioFormat::Mp3 => pb::AudioFormat::Mp3,
            AudioFormat::Opus => pb::AudioFormat::Opus,
        }
    }
}

/// WAV when unspecified.
impl From<pb::AudioFormat> for AudioFormat {
    fn from(f: pb::AudioFormat) -> Self {
        match f {
            pb::AudioFormat::Unspecified | pb::AudioFormat::Wav => AudioFormat::Wav,
            pb::AudioFormat::Flac => AudioFormat::Flac,
            pb::AudioFormat::Mp3 => AudioFormat::Mp3,
            pb::AudioFormat::Opus => AudioFormat::Opus,
        }
    }
}

impl From<Priority> for pb::Priority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Interactive => pb::Priority::Interactive,
            Priority::Standard => pb::Priority::Standard,
            Priority::Batch => pb::Priority::Batch,
        }
    }
}

/// Standard when unspecified.
impl From<pb::Priority> for Priority {
    fn from(p: pb::Priority) -> Self {
        match p {
            pb::Priority::Unspecified | pb::Priority::Standard => Priority::Standard,
            pb::Priority::Interactive => Priority::Interactive,
            pb::Priority::Batch => Priority::Batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sampler_round_trips() {
        for s in SamplerKind::ALL {
            let wire = pb::Sampler::from(*s);
            assert_eq!(Option::<SamplerKind>::from(wire), Some(*s));
        }
        assert_eq!(Option::<SamplerKind>::from(pb::Sampler::Unspecified), None);
    }

    #[test]
    fn states_formats_and_classes_round_trip() {
        for s in JobState::ALL {
            assert_eq!(Option::<JobState>::from(pb::JobState::from(*s)), Some(*s));
        }
        for f in AudioFormat::ALL {
            assert_eq!(AudioFormat::from(pb::AudioFormat::from(*f)), *f);
        }
        for p in Priority::ALL {
            assert_eq!(Priority::from(pb::Priority::from(*p)), *p);
        }
        assert_eq!(
            Priority::from(pb::Priority::Unspecified),
            Priority::Standard
        );
        assert_eq!(
            AudioFormat::from(pb::AudioFormat::Unspecified),
            AudioFormat::Wav
        );
    }
}
