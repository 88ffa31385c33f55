//! Tests against `testdata/reference.tfevents`, written by the Python `tensorboardX` package
//! (`testdata/make_reference.py`), and corruption handling.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pbip_tensorboard::{
    Event, EventWhat, EventWriter, FILE_VERSION, TbError, Value, parse_events, read_events,
};

fn testdata(name: &str) -> PathBuf {
    pbip_testdata::crate_dir().join("testdata").join(name)
}

fn expected() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(testdata("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["events"].as_array().unwrap().clone()
}

#[test]
fn reader_recovers_reference_scalars_exactly() {
    let events = read_events(testdata("reference.tfevents")).unwrap();
    let exp = expected();
    assert_eq!(events.len(), exp.len());
    for (e, x) in events.iter().zip(&exp) {
        assert_eq!(
            e.wall_time_secs.to_bits(),
            x["wall_time_bits"].as_u64().unwrap()
        );
        assert_eq!(e.step, x["step"].as_i64().unwrap());
        if let Some(fv) = x.get("file_version") {
            assert_eq!(
                e.what,
                EventWhat::FileVersion(fv.as_str().unwrap().to_string())
            );
            continue;
        }
        let EventWhat::Summary(vals) = &e.what else {
            panic!("not a summary: {e:?}")
        };
        assert_eq!(vals.len(), 1);
        assert_eq!(vals[0].tag, x["tag"].as_str().unwrap());
        if let Some(bits) = x.get("simple_value_bits") {
            let Value::Simple(v) = vals[0].value else {
                panic!("not simple: {:?}", vals[0])
            };
            assert_eq!(
                v.to_bits() as u64,
                bits.as_u64().unwrap(),
                "tag {}",
                vals[0].tag
            );
        } else {
            assert_eq!(
                vals[0].value,
                Value::Text(x["text"].as_str().unwrap().to_string())
            );
            assert_eq!(vals[0].plugin_name.as_deref(), Some("text"));
        }
    }
    // spot checks independent of the JSON
    assert_eq!(events[0].what, EventWhat::FileVersion(FILE_VERSION.into()));
    assert_eq!(events[2].scalar("loss/total"), Some(0.0));
    assert_eq!(events[5].step, 1 << 40);
    assert_eq!(events[10].step, -5);
}

/// A clock replaying the reference wall times in order.
fn replay_clock(times: Vec<f64>) -> pbip_tensorboard::Clock {
    let q = Arc::new(Mutex::new(times.into_iter()));
    Box::new(move || q.lock().unwrap().next().unwrap())
}

#[test]
fn writer_is_byte_identical_to_tensorboardx() {
    let exp = expected();
    let times: Vec<f64> = exp
        .iter()
        .map(|x| f64::from_bits(x["wall_time_bits"].as_u64().unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create_with_clock(dir.path(), replay_clock(times)).unwrap();
    for x in &exp[1..] {
        let tag = x["tag"].as_str().unwrap();
        let step = x["step"].as_i64().unwrap();
        if let Some(bits) = x.get("simple_value_bits") {
            w.add_scalar(tag, f32::from_bits(bits.as_u64().unwrap() as u32), step)
                .unwrap();
        } else {
            w.add_text(tag, x["text"].as_str().unwrap(), step).unwrap();
        }
    }
    let path = w.path().to_path_buf();
    drop(w);
    let ours = std::fs::read(&path).unwrap();
    let theirs = std::fs::read(testdata("reference.tfevents")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    assert!(ours == theirs, "event files differ");
}

#[test]
fn roundtrip_and_flush_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.add_scalar("loss", 0.5, 1).unwrap();
    w.add_scalars(&[("a", -1.0), ("b", f32::NAN)], 2).unwrap();
    w.add_text("notes", "<b>hi</b>", 3).unwrap();
    // Read while the writer is still open: everything logged so far must be on disk.
    let events = read_events(w.path()).unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[0].what, EventWhat::FileVersion(FILE_VERSION.into()));
    assert_eq!(events[1].scalar("loss"), Some(0.5));
    assert_eq!(events[1].step, 1);
    assert_eq!(events[2].scalar("a"), Some(-1.0));
    assert!(events[3].scalar("b").unwrap().is_nan());
    assert_eq!(events[2].wall_time_secs, events[3].wall_time_secs);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(events[1].wall_time_secs > 1.6e9 && events[1].wall_time_secs <= now);
    let EventWhat::Summary(v) = &events[4].what else {
        panic!()
    };
    assert_eq!(v[0].value, Value::Text("<b>hi</b>".into()));
    let all = pbip_tensorboard::scalars(&events);
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], ("loss".to_string(), 1, 0.5));
    // Explicit event round trip.
    let e = Event {
        wall_time_secs: 3.25,
        step: 9,
        what: EventWhat::FileVersion("x".into()),
    };
    w.write_event(&e).unwrap();
    w.flush().unwrap();
    assert_eq!(read_events(w.path()).unwrap()[5], e);
}

#[test]
fn truncated_file_is_an_error() {
    let data = std::fs::read(testdata("reference.tfevents")).unwrap();
    let p = Path::new("ref");
    for cut in [1usize, 8, 11, 12, 20, data.len() - 1, data.len() - 4] {
        match parse_events(&data[..cut], p) {
            Err(TbError::Truncated { .. }) => {}
            other => panic!("cut {cut}: expected Truncated, got {other:?}"),
        }
    }
    // Cutting at a record boundary is a valid, shorter file.
    let first_len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    assert_eq!(parse_events(&data[..first_len + 16], p).unwrap().len(), 1);
}

#[test]
fn bad_crc_is_an_error() {
    let data = std::fs::read(testdata("reference.tfevents")).unwrap();
    let p = Path::new("ref");
    // flip a byte in the first record's payload
    let mut d = data.clone();
    d[14] ^= 0x40;
    match parse_events(&d, p) {
        Err(TbError::BadCrc {
            part: "data",
            offset: 0,
            ..
        }) => {}
        other => panic!("expected data CRC error, got {other:?}"),
    }
    // flip a bit in the length: length CRC fails
    let mut d = data.clone();
    d[0] ^= 1;
    match parse_events(&d, p) {
        Err(TbError::BadCrc { part: "length", .. }) => {}
        other => panic!("expected length CRC error, got {other:?}"),
    }
    // corrupt the last record's data CRC
    let mut d = data.clone();
    let n = d.len();
    d[n - 1] ^= 0xff;
    assert!(matches!(
        parse_events(&d, p),
        Err(TbError::BadCrc { part: "data", .. })
    ));
    // a huge declared length with a valid length CRC is truncation, not a panic or allocation
    let len = u64::MAX.to_le_bytes();
    let mut d = len.to_vec();
    d.extend_from_slice(&pbip_tensorboard::masked_crc32c(&len).to_le_bytes());
    d.extend_from_slice(&[0; 8]);
    assert!(matches!(
        parse_events(&d, p),
        Err(TbError::Truncated { .. })
    ));
    // valid framing around garbage protobuf: malformed
    let d = pbip_tensorboard::frame_record(&[0x0a, 0x7f, 1]);
    assert!(matches!(
        parse_events(&d, p),
        Err(TbError::Malformed { .. })
    ));
    // missing file names the path
    let err = read_events("/nonexistent/events.x").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/events.x"));
}
