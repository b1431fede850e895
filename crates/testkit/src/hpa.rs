//! The Horizontal Pod Autoscaler's arithmetic for External metrics, as kube-controller-manager
//! computes it (the reference's "HPA arithmetic"), so a test can say what the HPA would do
//! with the adapter's answer without running the controller.

use std::time::Duration;

/// The HPA's default tolerance: ratios within 10 % of 1 change nothing.
pub const TOLERANCE: f64 = 0.1;
/// How long a scale-down recommendation waits by default (`stabilizationWindowSeconds`).
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);

/// The metric's target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `target.type: Value`, in milli-units: the sum of the items against this.
    Value(i64),
    /// `target.type: AverageValue`, in milli-units: the sum per current replica against this.
    AverageValue(i64),
}

/// The replica count one External metric proposes.
///
/// `sum_milli` is the sum of `MilliValue()` of the returned items; `current` is
/// `status.replicas`; `ready` the ready pods of the target (used by `Value` only).
pub fn proposal(sum_milli: i64, target: Target, current: u32, ready: u32) -> u32 {
    match target {
        Target::Value(target) => {
            let ratio = sum_milli as f64 / target as f64;
            if current == 0 {
                return ratio.ceil() as u32;
            }
            if (1.0 - ratio).abs() <= TOLERANCE {
                return current;
            }
            (ratio * f64::from(ready)).ceil() as u32
        }
        Target::AverageValue(target) => {
            let ratio = sum_milli as f64 / (target as f64 * f64::from(current));
            if current != 0 && (1.0 - ratio).abs() <= TOLERANCE {
                return current;
            }
            (sum_milli as f64 / target as f64).ceil() as u32
        }
    }
}

/// The replica count after `behavior`'s stabilization (default: scale-up at once, scale-down
/// to the highest proposal of the last five minutes), clamped to `[min, max]`.
/// `recent` are the proposals within the scale-down window, newest included.
pub fn stabilized(recent: &[u32], current: u32, min: u32, max: u32) -> u32 {
    let newest = recent.last().copied().unwrap_or(current);
    let highest = recent.iter().copied().max().unwrap_or(current);
    let desired = if newest >= current {
        newest
    } else {
        highest.min(current)
    };
    desired.clamp(min, max)
}

/// A Kubernetes quantity (`11`, `5500m`, `1500500m`, `2k`) in milli-units.
pub fn milli_value(quantity: &str) -> Option<i64> {
    let (number, scale) = match quantity.strip_suffix('m') {
        Some(number) => (number, 1),
        None => match quantity.strip_suffix('k') {
            Some(number) => (number, 1_000_000),
            None => (quantity, 1000),
        },
    };
    if let Ok(whole) = number.parse::<i64>() {
        return Some(whole * scale);
    }
    let decimal: f64 = number.parse().ok()?;
    Some((decimal * scale as f64).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_through_scales_out_at_eleven_of_ten_and_holds_at_six() {
        // 11 connections on one Satellite, target Value 10: 1.1 is just outside the tolerance
        // in floating point, as in kube-controller-manager, so the HPA asks for 2.
        assert_eq!(proposal(11_000, Target::Value(10_000), 1, 1), 2);
        // After scaling: 6/10 on two replicas proposes ceil(0.6 × 2) = 2.
        assert_eq!(proposal(6_000, Target::Value(10_000), 2, 2), 2);
        assert_eq!(proposal(5_500, Target::Value(10_000), 2, 2), 2);
        // Within the tolerance nothing changes.
        assert_eq!(proposal(10_500, Target::Value(10_000), 3, 3), 3);
        // Value proposals use ready pods, not replicas.
        assert_eq!(proposal(20_000, Target::Value(10_000), 3, 2), 4);
        // AverageValue: the sum over the target, whatever the readiness.
        assert_eq!(proposal(25_000, Target::AverageValue(10_000), 1, 0), 3);
        assert_eq!(proposal(0, Target::Value(10_000), 0, 0), 0);
    }

    #[test]
    fn scale_down_waits_for_the_window_and_scale_up_does_not() {
        // 5/10 on two proposes 1, but 2 was proposed within the window: stays 2.
        assert_eq!(proposal(5_000, Target::Value(10_000), 2, 2), 1);
        assert_eq!(stabilized(&[2, 2, 1], 2, 1, 3), 2);
        assert_eq!(stabilized(&[1, 1], 2, 1, 3), 1);
        assert_eq!(stabilized(&[2, 5], 2, 1, 3), 3);
    }

    #[test]
    fn quantities_read_as_milli_values() {
        assert_eq!(milli_value("11"), Some(11_000));
        assert_eq!(milli_value("5500m"), Some(5_500));
        assert_eq!(milli_value("2k"), Some(2_000_000));
        assert_eq!(milli_value("x"), None);
    }
}
