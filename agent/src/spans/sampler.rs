//! Head sampling per `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
//! Metrics always count every request; sampling only thins exported spans.

#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Keep a trace when its id falls under the ratio (deterministic, so
    /// every agent keeps the same traces).
    TraceIdRatio(f64),
    /// Follow an incoming parent's sampled flag; roots use the inner sampler.
    ParentBased(Box<Sampler>),
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("OTEL_TRACES_SAMPLER={0:?} is not supported; use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio")]
pub struct UnknownSampler(pub String);

impl Sampler {
    /// From the variable's value and its argument (the ratio, default 1.0).
    pub fn from_env(name: &str, arg: Option<&str>) -> Result<Sampler, UnknownSampler> {
        let ratio = || {
            arg.and_then(|a| a.trim().parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or(1.0)
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio()),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(ratio())))
            }
            other => return Err(UnknownSampler(other.to_string())),
        })
    }

    /// The same decision in the kernel's terms (`traceparent` injection
    /// decides the flag of the traces it starts): one source of truth, so
    /// the two never disagree on a trace.
    pub fn kernel(&self) -> sonde_common::sampling::Sampling {
        use sonde_common::sampling::Sampling;
        match self {
            Sampler::AlwaysOn => Sampling {
                all: 1,
                ..Sampling::default()
            },
            Sampler::AlwaysOff => Sampling::default(),
            Sampler::TraceIdRatio(r) if *r >= 1.0 => Sampler::AlwaysOn.kernel(),
            Sampler::TraceIdRatio(r) => Sampling {
                // Low 8 bytes below ratio x 2^64 (saturating cast).
                threshold: (r * u64::MAX as f64) as u64,
                ..Sampling::default()
            },
            Sampler::ParentBased(root) => Sampling {
                parent_based: 1,
                ..root.kernel()
            },
        }
    }

    /// `parent_sampled`: the sampled flag of an incoming traceparent, if any.
    pub fn should_sample(&self, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(_) => self.kernel().root(trace_id),
            Sampler::ParentBased(root) => match parent_sampled {
                Some(s) => s,
                None => root.should_sample(trace_id, None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_standard_name() {
        assert_eq!(
            Sampler::from_env("always_off", None),
            Ok(Sampler::AlwaysOff)
        );
        assert_eq!(
            Sampler::from_env("traceidratio", Some("0.25")),
            Ok(Sampler::TraceIdRatio(0.25))
        );
        assert_eq!(
            Sampler::from_env("traceidratio", Some("7")),
            Ok(Sampler::TraceIdRatio(1.0))
        );
        assert_eq!(
            Sampler::from_env("parentbased_traceidratio", Some("0.5")),
            Ok(Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(0.5))))
        );
        assert!(Sampler::from_env("jaeger_remote", None)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }

    #[test]
    fn decisions() {
        let low = [0u8; 16];
        let high = [0xffu8; 16];
        let r = Sampler::TraceIdRatio(0.5);
        assert!(r.should_sample(&low, None));
        assert!(!r.should_sample(&high, None));
        let pb = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        assert!(pb.should_sample(&high, Some(true)));
        assert!(!pb.should_sample(&low, None));
        assert!(!Sampler::default().should_sample(&low, Some(false)));
    }

    #[test]
    fn the_kernels_form_keeps_the_same_traces() {
        use sonde_common::sampling::Sampling;
        assert_eq!(Sampler::AlwaysOff.kernel(), Sampling::default());
        assert_eq!(
            Sampler::TraceIdRatio(1.0).kernel(),
            Sampler::AlwaysOn.kernel()
        );
        let quarter = Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(0.25)));
        let k = quarter.kernel();
        assert_eq!(k.parent_based, 1);
        // The parent's flag wins, both ways; roots by id, about a quarter.
        let id = |n: u64| {
            let mut t = [0u8; 16];
            t[8..].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            t
        };
        let kept = (0..10_000u64)
            .filter(|n| {
                let t = id(*n);
                assert_eq!(quarter.should_sample(&t, None), k.decide(&t, None));
                assert!(k.decide(&t, Some(true)) && !k.decide(&t, Some(false)));
                k.root(&t)
            })
            .count();
        assert!((2_300..2_700).contains(&kept), "{kept}");
    }
}
