//! Topic choice: the topics a connection subscribes to and the topic each publish goes to,
//! uniform or Zipf(s=1), from a seeded generator so that runs repeat.

/// Zipf(s=1) topic picker over `n` topics.
pub(crate) struct Picker {
    pub(crate) cdf: Vec<f64>,
    pub(crate) rng: u64,
    pub(crate) mode: String,
    pub(crate) n: usize,
}

impl Picker {
    pub(crate) fn new(mode: &str, n: usize, seed: u64) -> Self {
        let cdf = if mode == "zipf" {
            let mut acc = 0.0;
            let mut v: Vec<f64> = (1..=n)
                .map(|k| {
                    acc += 1.0 / k as f64;
                    acc
                })
                .collect();
            let total = acc;
            v.iter_mut().for_each(|x| *x /= total);
            v
        } else {
            Vec::new()
        };
        Picker {
            cdf,
            rng: seed | 1,
            mode: mode.to_string(),
            n,
        }
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
    pub(crate) fn pick(&mut self) -> u32 {
        match self.mode.as_str() {
            "one" => 0,
            "zipf" => {
                let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                self.cdf.partition_point(|&c| c < u).min(self.n - 1) as u32
            }
            _ => (self.next_u64() % self.n as u64) as u32,
        }
    }
}
