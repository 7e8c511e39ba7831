//! Interoperability of [`ShareableList`] with the real CPython 3.11, 3.12 and 3.13
//! (`multiprocessing.shared_memory.ShareableList`): a list made in Rust read and written by
//! Python, and a list made in Python read and written by Rust; the same bytes for the same
//! items; CPython's messages for the same errors; `count` and `index` by Python's `==`; the
//! formats (`ShareableList.format`) both sides see; Python's `repr` of every item.
//!
//! `python3` (3.11 here) must exist; 3.12 and 3.13 are found with `pyenv prefix 3.12.1` /
//! `pyenv prefix 3.13.0`, and are skipped with a message when pyenv or the version is missing
//! (as in `interop.rs`). Interpreters are always run by absolute path.
//!
//! Python never unlinks a segment here, and its resource tracker never learns of one: 3.13
//! opens segments with `track=False`, 3.11 and 3.12 (which register even a segment they only
//! attach to, CPython gh-82300) `resource_tracker.unregister` each one. The Rust side unlinks
//! every segment at the end, also when a test fails. Python's stderr must stay empty (no
//! tracker warnings), and its script arms `signal.alarm` so that it cannot outlive a lost run.
//!
//! One difference is asserted rather than hidden: CPython sizes a `str` slot by characters,
//! so `'ééééé'` (10 bytes of UTF-8) gets 8 bytes and comes back as `'éééé'` on both sides
//! (CPython gh-88336); Rust sizes it by bytes (16), and Python reads the whole string.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

use common::python::{Python, python};
use multiproc::{ListError, ListItem, ShareableList, SharedMemory};

/// The Python side. `python -c SCRIPT <command> <name> <python literal>`:
///
/// - `check <name> <items>`: attaches, asserts that the list is `items` (types, the sign of
///   zeros and NaN included), prints `FORMAT <format>` and `REPR <repr(list)>`.
/// - `set <name> <[(index, value), ...]>`: attaches, assigns each, printing `OK` or
///   `ERR <exception type> <message>` for each.
/// - `create <name> <items>`: makes `ShareableList(items, name=name)` and leaves it.
/// - `find <name> <[value, ...]>`: prints `COUNT <n> INDEX <i>` or `COUNT <n> ERR <message>`
///   for each value.
const SCRIPT: &str = r#"
import functools, math, signal, sys
from multiprocessing import resource_tracker, shared_memory

signal.alarm(30)  # never outlive a lost test run

TRACK_PARAMETER = sys.version_info >= (3, 13)
if TRACK_PARAMETER:
    # ShareableList looks SharedMemory up in its module at call time.
    shared_memory.SharedMemory = functools.partial(shared_memory.SharedMemory, track=False)

def untrack(sl):
    if not TRACK_PARAMETER:
        resource_tracker.unregister(sl.shm._name, 'shared_memory')
    return sl

def literal(text):
    return eval(text, {'__builtins__': {}}, {'inf': math.inf, 'nan': math.nan})

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b

command, name, arg = sys.argv[1], sys.argv[2], literal(sys.argv[3])
if command == 'create':
    sl = untrack(shared_memory.ShareableList(arg, name=name))
    print('SIZE', sl.shm.size)
else:
    sl = untrack(shared_memory.ShareableList(name=name))
    if command == 'check':
        got = list(sl)
        if not same(got, arg):
            raise AssertionError('got %r, want %r' % (got, arg))
        print('FORMAT', sl.format)
        print('REPR', repr(got))
    elif command == 'set':
        for index, value in arg:
            try:
                sl[index] = value
                print('OK')
            except Exception as e:
                print('ERR', type(e).__name__, e)
    elif command == 'find':
        for value in arg:
            count = sl.count(value)
            try:
                print('COUNT', count, 'INDEX', sl.index(value))
            except ValueError as e:
                print('COUNT', count, 'ERR', e)
    else:
        raise ValueError(command)
sl.shm.close()
"#;

/// Runs one command of [`SCRIPT`]; fails the test unless it succeeds with an empty stderr.
/// Returns its output lines.
fn run(py: &Python, command: &str, name: &str, arg: &str) -> Vec<String> {
    let out = Command::new(&py.exe)
        .args(["-I", "-X", "utf8", "-c", SCRIPT, command, name, arg])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "CPython {:?} `{command} {name} {arg}` failed ({}):\n{stdout}\n{stderr}",
        py.version,
        out.status
    );
    stdout.lines().map(str::to_owned).collect()
}

/// The value of the output line beginning with `key `.
fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|l| l.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

/// Python's `repr` of a list of items (what `check` takes and prints).
fn repr(items: &[ListItem]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// A unique segment name for a list Python makes.
fn unique_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "sl_interop_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unlinks the segment `name` when dropped (also when a test fails); Python never does.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Ok(shm) = SharedMemory::attach(&self.0) {
            let _ = shm.unlink();
        }
    }
}

/// Asserts that Python sees `want` in the list called `name`, with the formats `format`.
fn python_sees(py: &Python, name: &str, want: &[ListItem], format: &str) {
    let lines = run(py, "check", name, &repr(want));
    assert_eq!(field(&lines, "FORMAT"), format, "CPython {:?}", py.version);
    assert_eq!(
        field(&lines, "REPR"),
        repr(want),
        "CPython {:?}",
        py.version
    );
}

/// Items of every type, with edge values.
fn items() -> Vec<ListItem> {
    vec![
        0.into(),
        (-1).into(),
        i64::MIN.into(),
        i64::MAX.into(),
        1.5.into(),
        (-0.0).into(),
        f64::NEG_INFINITY.into(),
        f64::NAN.into(),
        1e16.into(),
        true.into(),
        false.into(),
        "".into(),
        "hi".into(),
        "eight ch".into(),
        "h\u{e9}llo \u{2603} it's".into(),
        "\u{e9}".repeat(5).into(),
        b"".into(),
        b"\x00\xffraw \"'".into(),
        ListItem::None,
    ]
}

/// (a) A list made in Rust, read and written by Python, read back in Rust.
fn rust_made(py: &Python) {
    let mut want = items();
    want.push(b"nul\x00".into());
    let list = ShareableList::new(&want).unwrap();
    let _unlink = Unlink(list.name().to_owned());
    // CPython, like Rust, strips the trailing NUL.
    *want.last_mut().unwrap() = b"nul".into();
    let got = list.to_vec().unwrap();
    assert!(got.len() == want.len() && want.iter().zip(&got).all(|(a, b)| same(a, b)));
    let format = list.format().unwrap();
    // The 10-byte str has a 16-byte slot (CPython would give it 8).
    assert_eq!(
        format,
        "qqqqdddddxxxxxxx?xxxxxxx?8s8s16s16s16s8s16sxxxxxx?x8s"
    );
    python_sees(py, list.name(), &want, &format);

    // Python writes every type over every other, and meets both errors.
    let assignments: Vec<(usize, ListItem)> = vec![
        (0, "abc".into()),
        (1, 2.5.into()),
        (2, ListItem::None),
        (3, true.into()),
        (9, b"bytes 8!".into()),
        (11, "nine char".into()),
        (12, 7.into()),
        (13, "nine char".into()),
        (14, b"sixteen bytes..".into()),
        (15, "\u{e9}".repeat(8).into()),
        (17, "str".into()),
        (18, (-5).into()),
        (list.len(), 1.into()),
    ];
    let lines = run(py, "set", list.name(), &assignments_repr(&assignments));
    assert_eq!(lines.len(), assignments.len(), "{lines:?}");
    for ((index, item), line) in assignments.iter().zip(&lines) {
        let expected = match *index {
            11 => "ERR ValueError bytes/str item exceeds available storage",
            i if i == list.len() => "ERR IndexError assignment index out of range",
            _ => "OK",
        };
        assert_eq!(line, expected, "list[{index}] = {item}");
        if expected != "OK" {
            // Rust refuses the same assignment with the same message.
            let err = list.set(*index, item.clone()).unwrap_err();
            assert_eq!(
                expected.splitn(3, ' ').nth(2),
                Some(err.to_string().as_str())
            );
        } else {
            want[*index] = item.clone();
        }
    }
    let got = list.to_vec().unwrap();
    assert!(
        want.iter().zip(&got).all(|(a, b)| same(a, b)),
        "{got:?}\n{want:?}"
    );
    // Slots do not move: a str in an 8-byte slot is `8s`, a str slot keeps its format, and
    // 'éééééééé' (16 bytes) fits the 16-byte slot Rust gave 'ééééé'.
    assert_eq!(
        list.format().unwrap(),
        "8sdxxxxxx?xxxxxxxx?ddddd8sxxxxxxx?8sq16s16s16s8s16sq8s"
    );

    // Rust writes, Python reads.
    list.set(0, 42).unwrap();
    list.set(13, "12345678").unwrap();
    list.set(16, ListItem::None).unwrap();
    want[0] = 42.into();
    want[13] = "12345678".into();
    want[16] = ListItem::None;
    python_sees(py, list.name(), &want, &list.format().unwrap());
    list.shm().unlink().unwrap();
}

/// (b) A list made in Python, read and written by Rust, read back in Python.
fn python_made(py: &Python) {
    let name = unique_name();
    let _unlink = Unlink(name.clone());
    let mut want = items();
    // CPython would truncate 'ééééé' (see below); everything else is the same either way.
    want.remove(15);
    let lines = run(py, "create", &name, &repr(&want));
    let list = ShareableList::attach(&name).unwrap();
    assert_eq!(field(&lines, "SIZE"), list.shm().size().to_string());
    let got = list.to_vec().unwrap();
    assert!(
        want.iter().zip(&got).all(|(a, b)| same(a, b)) && got.len() == want.len(),
        "{got:?}\n{want:?}"
    );
    python_sees(py, &name, &want, &list.format().unwrap());

    // Rust makes the very same bytes from the same items.
    let ours = ShareableList::new(&want).unwrap();
    assert_eq!(ours.shm().to_vec(), list.shm().to_vec());
    ours.shm().unlink().unwrap();

    // Rust writes every type over others; Python reads.
    let changes: Vec<(usize, ListItem)> = vec![
        (0, "8 bytes!".into()),
        (4, b"".into()),
        (9, 1.25.into()),
        (12, (-3).into()),
        (13, false.into()),
        (14, "sixteen bytes..".into()),
        (15, ListItem::None),
        (17, b"was None".into()),
    ];
    for (index, item) in &changes {
        list.set(*index, item.clone()).unwrap();
        want[*index] = item.clone();
    }
    assert!(matches!(
        list.set(12, "nine char"),
        Err(ListError::ExceedsStorage {
            len: 9,
            available: 8
        })
    ));
    python_sees(py, &name, &want, &list.format().unwrap());

    // count and index by Python's `==`, with CPython's message for a missing value.
    let values: Vec<ListItem> = vec![
        0.into(),
        false.into(),
        0.0.into(),
        (-1).into(),
        "hi".into(),
        b"hi".into(),
        ListItem::None,
        f64::NAN.into(),
        "missing".into(),
    ];
    let lines = run(py, "find", &name, &repr(&values));
    for (value, line) in values.iter().zip(&lines) {
        let count = list.count(value).unwrap();
        let rust = match list.index(value) {
            Ok(i) => format!("COUNT {count} INDEX {i}"),
            Err(e @ ListError::NotFound(_)) => format!("COUNT {count} ERR {e}"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(&rust, line, "{value}");
    }

    // CPython's slot for 'ééééé' is 8 bytes: the fifth 'é' is lost, on both sides.
    let name = unique_name();
    let _unlink_too = Unlink(name.clone());
    run(py, "create", &name, "['\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}']");
    let truncated = ShareableList::attach(&name).unwrap();
    assert_eq!(truncated.to_vec().unwrap(), ["\u{e9}".repeat(4).into()]);
    assert_eq!(truncated.format().unwrap(), "8s");
    python_sees(py, &name, &["\u{e9}".repeat(4).into()], "8s");

    list.shm().unlink().unwrap();
    truncated.shm().unlink().unwrap();
}

/// `[(index, value), ...]` in Python.
fn assignments_repr(assignments: &[(usize, ListItem)]) -> String {
    let parts: Vec<String> = assignments
        .iter()
        .map(|(i, v)| format!("({i}, {v})"))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Python's `same` in the script: equal types and values, NaN equal to NaN, -0.0 apart from
/// 0.0.
fn same(a: &ListItem, b: &ListItem) -> bool {
    match (a, b) {
        (ListItem::Float(x), ListItem::Float(y)) => {
            (x.is_nan() && y.is_nan()) || (x == y && x.is_sign_negative() == y.is_sign_negative())
        }
        _ => a == b,
    }
}

macro_rules! interpreters {
    ($($module:ident => $version:literal),* $(,)?) => {$(
        mod $module {
            #[multiproc::test]
            fn rust_made_list_in_python() {
                if let Some(py) = super::python($version) {
                    super::rust_made(&py);
                }
            }

            #[multiproc::test]
            fn python_made_list_in_rust() {
                if let Some(py) = super::python($version) {
                    super::python_made(&py);
                }
            }
        }
    )*};
}

interpreters! {
    cpython_3_11 => "3.11",
    cpython_3_12 => "3.12",
    cpython_3_13 => "3.13",
}

/// Item 0 becomes `"child"` plus the start method, as a child process writes it.
fn child_writes(args: (ShareableList, String)) -> usize {
    let (list, method) = args;
    list.set(0, format!("child {method}")).unwrap();
    list.len()
}

/// A list travels to a child as a Process argument (serde, through its segment), under
/// every start method.
#[multiproc::test]
fn travels_to_a_child_process() {
    let list = ShareableList::new(&["a slot of 24 bytes......".into(), 2.into()]).unwrap();
    for method in ["fork", "spawn", "forkserver"] {
        let ctx = multiproc::get_context(method).unwrap();
        let mut p = ctx.process(child_writes, (list.clone(), method.to_owned()));
        p.start().unwrap();
        assert_eq!(p.join_result().unwrap(), 2);
        assert_eq!(list.get(0).unwrap(), format!("child {method}").into());
    }
    list.shm().unlink().unwrap();
}
