use std::time::Duration;

/// Smoothed round-trip time in the manner of RFC 6298 / RFC 9002.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
    latest: Duration,
    has_sample: bool,
}

impl RttEstimator {
    pub fn new(initial: Duration) -> Self {
        RttEstimator {
            srtt: initial,
            rttvar: initial / 2,
            latest: initial,
            has_sample: false,
        }
    }

    pub fn update(&mut self, sample: Duration) {
        self.latest = sample;
        if !self.has_sample {
            self.has_sample = true;
            self.srtt = sample;
            self.rttvar = sample / 2;
            return;
        }
        let diff = self.srtt.abs_diff(sample);
        self.rttvar = (self.rttvar * 3 + diff) / 4;
        self.srtt = (self.srtt * 7 + sample) / 8;
    }

    pub fn srtt(&self) -> Duration {
        self.srtt
    }

    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// How long to wait for an answer before concluding something was lost.
    pub fn timeout(&self, floor: Duration) -> Duration {
        (self.srtt + self.rttvar * 4).max(floor)
    }
}
