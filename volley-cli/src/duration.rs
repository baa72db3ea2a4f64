//! The one duration syntax of every timeout and interval flag and config key: a number with a
//! unit, `250ms`, `30s`, `1.5s`, `2m`, `1h` (also `us`), so that no reader has to remember which
//! flag counts in which unit. A bare number is still accepted, in the unit the flag or key had
//! before units were written out (seconds for most; milliseconds for the old `…-ms` spellings,
//! kept as hidden aliases), so existing command lines and config files keep their meaning.

use std::time::Duration;

/// The unit a bare number is read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bare {
    Seconds,
    Millis,
}

/// The longest duration any flag takes: a day (larger values are typing mistakes, and a
/// `Duration` from an absurd float would panic).
pub const MAX: Duration = Duration::from_secs(86_400);

/// `text` as a duration: `NUMBER UNIT` (`us`, `ms`, `s`, `m`, `h`; spaces allowed between) or a
/// bare `NUMBER` in `bare`'s unit. Negative, non-finite and longer-than-a-day values are refused
/// with a message that shows the syntax.
pub fn parse(text: &str, bare: Bare) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let not_a_duration =
        || format!("`{text}` is not a duration; write one such as 250ms, 30s, 1.5s, 2m or 1h");
    if number.is_empty() {
        return Err(not_a_duration());
    }
    let scale = match (unit.trim(), bare) {
        ("", Bare::Seconds) | ("s", _) => 1.0,
        ("", Bare::Millis) | ("ms", _) => 1e-3,
        ("us" | "µs", _) => 1e-6,
        ("m" | "min", _) => 60.0,
        ("h", _) => 3600.0,
        (other, _) => {
            return Err(format!(
                "`{text}`: unknown unit `{other}`; write a duration such as 250ms, 30s, 1.5s, 2m \
                 or 1h"
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| not_a_duration())?;
    let secs = value * scale;
    if !secs.is_finite() || secs > MAX.as_secs_f64() {
        return Err(format!("`{text}` is longer than a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// clap's parser for a flag whose bare numbers are seconds.
pub fn secs(text: &str) -> Result<Duration, String> {
    parse(text, Bare::Seconds)
}

/// clap's parser for an old `…-ms` flag, whose bare numbers are milliseconds.
pub fn millis(text: &str) -> Result<Duration, String> {
    parse(text, Bare::Millis)
}

/// Shows `d` in the syntax [`parse`] reads (`250ms`, `1.5s`).
pub fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// A config-file duration: a string in the flag syntax (`"30s"`) or a bare number (in the key's
/// old unit).
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Value {
    Number(f64),
    Text(String),
}

fn from_value<'de, D: serde::Deserializer<'de>>(
    d: D,
    bare: Bare,
) -> Result<Option<Duration>, D::Error> {
    let value: Option<Value> = serde::Deserialize::deserialize(d)?;
    value
        .map(|v| match v {
            Value::Number(n) => parse(&n.to_string(), bare),
            Value::Text(t) => parse(&t, bare),
        })
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// serde: an optional duration whose bare numbers are seconds (`#[serde(default,
/// deserialize_with = "crate::duration::de_secs")]`).
pub fn de_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    from_value(d, Bare::Seconds)
}

/// serde: an optional duration whose bare numbers are milliseconds (the old `…_ms` keys).
pub fn de_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    from_value(d, Bare::Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o7_durations_read_with_units_and_bare_numbers_in_the_old_unit() {
        let ms = Duration::from_millis;
        assert_eq!(secs("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(secs("250ms"), Ok(ms(250)));
        assert_eq!(secs("1.5s"), Ok(ms(1500)));
        assert_eq!(secs("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(secs("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(secs("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(secs(" 2 s "), Ok(Duration::from_secs(2)));
        // Bare numbers keep their old meaning.
        assert_eq!(secs("60"), Ok(Duration::from_secs(60)));
        assert_eq!(secs("0.5"), Ok(ms(500)));
        assert_eq!(millis("5000"), Ok(ms(5000)));
        assert_eq!(millis("2.5"), Ok(Duration::from_micros(2500)));
        assert_eq!(millis("3s"), Ok(Duration::from_secs(3)));
        for bad in [
            "", "s", "-1s", "1x", "1.2.3s", "2d", "inf", "NaN", "1e9s", "25h",
        ] {
            let err = secs(bad).unwrap_err();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
        assert!(secs("2d").unwrap_err().contains("250ms, 30s"));
        assert_eq!(show(ms(250)), "250ms");
        assert_eq!(show(ms(1500)), "1.5s");
        assert_eq!(secs(&show(ms(1500))), Ok(ms(1500)));
    }

    #[test]
    fn o7_config_durations_take_strings_and_bare_numbers() {
        #[derive(serde::Deserialize)]
        struct F {
            #[serde(default, deserialize_with = "de_secs")]
            a: Option<Duration>,
            #[serde(default, deserialize_with = "de_millis")]
            b: Option<Duration>,
            #[serde(default, deserialize_with = "de_secs")]
            c: Option<Duration>,
        }
        let f: F = toml::from_str("a = \"250ms\"\nb = 5000\n").unwrap();
        assert_eq!(f.a, Some(Duration::from_millis(250)));
        assert_eq!(f.b, Some(Duration::from_secs(5)));
        assert_eq!(f.c, None);
        let f: F = toml::from_str("a = 60\nb = \"1.5s\"").unwrap();
        assert_eq!(f.a, Some(Duration::from_secs(60)));
        assert_eq!(f.b, Some(Duration::from_millis(1500)));
        let err = toml::from_str::<F>("a = \"soon\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("soon") && err.contains("30s"), "{err}");
    }
}
