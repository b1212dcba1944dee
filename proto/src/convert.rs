//! The protobuf enums <-> the domain's (`tutti_shared`), in one place: the coordinator, the
//! CLI and the tests convert through these.

use tutti_shared::job::SamplerKind;

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
}
