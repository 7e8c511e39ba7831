//! The pickle codec against real CPython (3.11 as `python3`, and 3.12.1 and 3.13.0 from pyenv
//! when installed): what Rust encodes, `pickle.loads` reads as the expected Python value, and
//! what `pickle.dumps` writes (multiprocessing's default protocol, protocol 5, and the older
//! ones) Rust decodes into typed values, with clear errors for what is not plain data.
//!
//! Each interpreter runs twice: once to pickle every Python-side case, once to check every
//! Rust-side case. Values travel as length-prefixed records on stdin and stdout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::io::Write;
use std::process::{Command, Stdio};

mod common;

use common::python::{Python, python};
use multiproc::codec::{Codec, Pickle, PyValue};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

/// Names, helpers and the strict comparison both scripts use.
const PRELUDE: &str = r#"
import collections, dataclasses, datetime, decimal, fractions, math, os, pickle, struct, sys
from multiprocessing.reduction import ForkingPickler

nan, inf = float('nan'), float('inf')

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

@dataclasses.dataclass
class Data:
    a: int
    b: str

class Sub(int):
    pass

class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned >&2; exit 3',))

def recursive():
    l = []
    l.append(l)
    return l

def shared():
    s = 'shared' * 10
    inner = [1, 2]
    return [s, s, inner, inner, (s, inner)]

NS = dict(globals())

def read_records():
    data = sys.stdin.buffer.read()
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from('<I', data, i)
        out.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return out

def write_record(b):
    sys.stdout.buffer.write(struct.pack('<I', len(b)))
    sys.stdout.buffer.write(b)

def same(a, b, ordered):
    """Equal, with the same types all the way down (1 != 1.0 != True, set != frozenset)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, ordered) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b) or (ordered and not same(list(a), list(b), True)):
            return False
        keys = {k: k for k in b}
        return all(k in keys and same(k, keys[k], ordered) and same(a[k], b[k], ordered)
                   for k in a)
    if isinstance(a, (set, frozenset)):
        items = {x: x for x in b}
        return len(a) == len(b) and all(x in items and same(x, items[x], ordered) for x in a)
    return a == b

def short(v):
    r = repr(v)
    return r if len(r) < 300 else r[:300] + '...'
"#;

/// Pickles each `(name, expression, protocols)` record; writes `(name, protocol, pickle)`.
const DUMP: &str = r#"
records = read_records()
for name, expr, protocols in zip(records[0::3], records[1::3], records[2::3]):
    obj = eval(expr.decode(), NS)
    for p in protocols.decode().split(','):
        if p == 'default':
            # What multiprocessing's Connection.send does.
            data = bytes(ForkingPickler.dumps(obj))
            p = 'default(%d)' % pickle.DEFAULT_PROTOCOL
        else:
            data = pickle.dumps(obj, protocol=int(p))
        for part in (name, p.encode(), data):
            write_record(part)
"#;

/// Loads each `(name, mode, expected expression, pickle)` record; prints `ok name` or
/// `FAIL name: why`.
const LOAD: &str = r#"
records = read_records()
for name, mode, expr, data in zip(*[iter(records)] * 4):
    name = name.decode()
    try:
        got = pickle.loads(data)
        want = eval(expr.decode(), NS)
        if same(got, want, mode == b'ordered'):
            print('ok', name)
        else:
            print('FAIL %s: got %s, want %s' % (name, short(got), short(want)))
    except Exception as e:
        print('FAIL %s: %s: %s' % (name, type(e).__name__, e))
"#;

/// How the messages name `py`.
fn label(py: &Python) -> String {
    format!(
        "CPython {}.{} ({})",
        py.version.0,
        py.version.1,
        py.exe.display()
    )
}

/// Runs `script` with `records` on stdin under `py`; returns stdout. Panics if Python fails.
fn run(py: &Python, script: &str, records: Vec<u8>) -> Vec<u8> {
    let program = format!("{PRELUDE}\n{script}");
    let mut child = Command::new(&py.exe)
        .args(["-I", "-c", &program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", label(py)));
    let mut stdin = child.stdin.take().unwrap();
    // Written from another thread, so a large input cannot block against the output.
    let writer = std::thread::spawn(move || stdin.write_all(&records));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        label(py),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `python3` (required), then pyenv's 3.12.1 and 3.13.0 when installed.
fn interpreters() -> Vec<Python> {
    ["3.11", "3.12", "3.13"]
        .into_iter()
        .filter_map(python)
        .collect()
}

fn put_record(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn records(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        out.push(data[4..4 + n].to_vec());
        data = &data[4 + n..];
    }
    out
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    Pickle::encode(value, &mut out).unwrap();
    out
}

// ------------------------------------------------------------------------------------------
// Python -> Rust
// ------------------------------------------------------------------------------------------

type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// Decodes into `T` and compares with `want`.
fn is<T: DeserializeOwned + PartialEq + Debug + 'static>(want: T) -> Check {
    Box::new(move |bytes| {
        let got: T = Pickle::decode(bytes).map_err(|e| e.to_string())?;
        if got == want {
            Ok(())
        } else {
            Err(format!("got {got:?}, want {want:?}"))
        }
    })
}

/// Decodes into `T` and checks it with `ok`.
fn satisfies<T: DeserializeOwned + Debug + 'static>(ok: impl Fn(&T) -> bool + 'static) -> Check {
    Box::new(move |bytes| {
        let got: T = Pickle::decode(bytes).map_err(|e| e.to_string())?;
        if ok(&got) {
            Ok(())
        } else {
            Err(format!("unexpected {got:?}"))
        }
    })
}

/// Decoding into `T` fails with an error that contains `needle`.
fn refused<T: DeserializeOwned + Debug + 'static>(needle: &'static str) -> Check {
    Box::new(move |bytes| match Pickle::decode::<T>(bytes) {
        Ok(v) => Err(format!(
            "decoded {v:?}; want an error containing {needle:?}"
        )),
        Err(e) => {
            let text = e.to_string();
            if text.starts_with("cannot decode pickle: ") && text.contains(needle) {
                Ok(())
            } else {
                Err(format!("error {text:?} does not contain {needle:?}"))
            }
        }
    })
}

struct FromPython {
    name: &'static str,
    expr: &'static str,
    protocols: &'static str,
    check: Check,
}

const ALL_PROTOCOLS: &str = "default,0,1,2,3,4,5";

fn from(name: &'static str, expr: &'static str, check: Check) -> FromPython {
    FromPython {
        name,
        expr,
        protocols: ALL_PROTOCOLS,
        check,
    }
}

#[derive(Debug, PartialEq, Deserialize)]
struct Record {
    id: u32,
    name: String,
    tags: Vec<String>,
    score: Option<f64>,
}

#[derive(Debug, PartialEq, Deserialize)]
enum Command2 {
    Stop,
    Move(i32, i32),
    Say(String),
    Resize { w: u32, h: u32 },
}

fn from_python_cases() -> Vec<FromPython> {
    let s = |v: &str| v.to_string();
    vec![
        from("none", "None", is(())),
        from("none_option", "None", is(None::<i64>)),
        from("some", "5", is(Some(5i64))),
        from("bools", "[True, False]", is(vec![true, false])),
        from(
            "small_ints",
            "(0, 1, -1, 255, 256, 65535, 65536, -129)",
            is((0u8, 1i8, -1i16, 255u8, 256u16, 65535u32, 65536i64, -129i32)),
        ),
        from(
            "i32_edges",
            "(-2**31, 2**31 - 1, 2**31, 2**32)",
            is((i32::MIN, i32::MAX, 1u32 << 31, 1i64 << 32)),
        ),
        from("i64_edges", "(-2**63, 2**63 - 1)", is((i64::MIN, i64::MAX))),
        from(
            "u64_edges",
            "(2**63, 2**64 - 1)",
            is((1u64 << 63, u64::MAX)),
        ),
        from(
            "i128_edges",
            "(-2**127, 2**127 - 1, 2**128 - 1)",
            is((i128::MIN, i128::MAX, u128::MAX)),
        ),
        from(
            "u64_too_big",
            "2**64",
            refused::<u64>("18446744073709551616"),
        ),
        from(
            "i64_too_big",
            "2**100",
            refused::<i64>("1267650600228229401496703205376"),
        ),
        from("negative_into_u32", "-1", refused::<u32>("-1")),
        from(
            "u128_too_big",
            "2**128",
            refused::<u128>("340282366920938463463374607431768211456"),
        ),
        from(
            "floats",
            "(1.5, -0.0, 1e300, 5e-324, inf, -inf)",
            satisfies(|v: &(f64, f64, f64, f64, f64, f64)| {
                v.0 == 1.5
                    && v.1 == 0.0
                    && v.1.is_sign_negative()
                    && v.2 == 1e300
                    && v.3 == 5e-324
                    && v.4 == f64::INFINITY
                    && v.5 == f64::NEG_INFINITY
            }),
        ),
        from("nan", "nan", satisfies(|v: &f64| v.is_nan())),
        from("int_as_float", "7", is(7.0f64)),
        from("str", "'héllo wörld ✓ 🦀'", is(s("héllo wörld ✓ 🦀"))),
        from(
            "str_escapes",
            r"'\\ \n \r \x00 \x1a \u005c'",
            is(s("\\ \n \r \0 \x1a \\")),
        ),
        from("str_empty", "''", is(String::new())),
        from("str_long", "'x' * 70000", is("x".repeat(70000))),
        from("char", "'ß'", is('ß')),
        from("lone_surrogate", r"'\ud800'", refused::<String>("UTF-8")),
        from(
            "bytes",
            "bytes(range(256))",
            is(ByteBuf::from((0..=255).collect::<Vec<u8>>())),
        ),
        from("bytes_empty", "b''", is(ByteBuf::new())),
        from("bytes_into_vec", "b'abc'", is(b"abc".to_vec())),
        from(
            "bytearray",
            "bytearray(b'\\x00ab')",
            is(ByteBuf::from(b"\0ab".to_vec())),
        ),
        from("bytearray_empty", "bytearray()", is(ByteBuf::new())),
        from(
            "bytearray_py_value",
            "bytearray(b'ab')",
            is(PyValue::Bytes(b"ab".to_vec())),
        ),
        FromPython {
            name: "bytes_16mib",
            expr: "b'\\xa5' * (16 << 20)",
            protocols: "default,5",
            check: satisfies(|b: &ByteBuf| b.len() == 16 << 20 && b.iter().all(|&x| x == 0xa5)),
        },
        from("list", "[1, 2, 3]", is(vec![1u16, 2, 3])),
        from(
            "list_long",
            "list(range(2500))",
            is((0..2500).collect::<Vec<i64>>()),
        ),
        from("list_empty", "[]", is(Vec::<String>::new())),
        from(
            "tuple",
            "(1, 'a', 2.5, None)",
            is((1u8, s("a"), 2.5f64, None::<u8>)),
        ),
        from("tuple_1", "(1,)", is((1u8,))),
        from("tuple_empty_as_unit", "()", is(())),
        from("tuple_into_vec", "(1, 2)", is(vec![1u8, 2])),
        from("list_into_tuple", "[1, 'b']", is((1u8, s("b")))),
        from(
            "nested",
            "[(1, [(2, (3,))]), (4, [])]",
            is::<Vec<(u8, Vec<(u8, (u8,))>)>>(vec![(1, vec![(2, (3,))]), (4, vec![])]),
        ),
        from(
            "dict_str_keys",
            "{'a': 1, 'b': 2}",
            is(HashMap::from([(s("a"), 1i64), (s("b"), 2)])),
        ),
        from(
            "dict_int_keys",
            "{1: 'one', -2: 'minus two', 2**40: 'big'}",
            is(BTreeMap::from([
                (1i64, s("one")),
                (-2, s("minus two")),
                (1 << 40, s("big")),
            ])),
        ),
        from(
            "dict_tuple_keys",
            "{(1, 2): True, (3, 4): False}",
            is(HashMap::from([((1u8, 2u8), true), ((3, 4), false)])),
        ),
        from("dict_empty", "{}", is(HashMap::<String, i32>::new())),
        from(
            "dict_large",
            "{str(i): i for i in range(1500)}",
            is((0..1500)
                .map(|i| (i.to_string(), i))
                .collect::<HashMap<String, u32>>()),
        ),
        from(
            "list_of_dicts",
            "[{'x': 1.0, 'y': 2.0}, {'x': 3.0, 'y': 4.0}]",
            is(vec![
                BTreeMap::from([(s("x"), 1.0), (s("y"), 2.0)]),
                BTreeMap::from([(s("x"), 3.0), (s("y"), 4.0)]),
            ]),
        ),
        from(
            "shared_references",
            "shared()",
            is((
                s("shared").repeat(10),
                s("shared").repeat(10),
                vec![1u8, 2],
                vec![1u8, 2],
                (s("shared").repeat(10), vec![1u8, 2]),
            )),
        ),
        from(
            "struct",
            "{'id': 7, 'name': 'seven', 'tags': ['a', 'b'], 'score': None, 'extra': 1}",
            is(Record {
                id: 7,
                name: s("seven"),
                tags: vec![s("a"), s("b")],
                score: None,
            }),
        ),
        from("enum_unit", "'Stop'", is(Command2::Stop)),
        from("enum_tuple", "{'Move': (1, -2)}", is(Command2::Move(1, -2))),
        from(
            "enum_tuple_list",
            "{'Move': [1, -2]}",
            is(Command2::Move(1, -2)),
        ),
        from("enum_newtype", "{'Say': 'hi'}", is(Command2::Say(s("hi")))),
        from(
            "enum_struct",
            "{'Resize': {'w': 3, 'h': 4}}",
            is(Command2::Resize { w: 3, h: 4 }),
        ),
        from(
            "set",
            "{3, 1, 2}",
            satisfies(|v: &BTreeSet<u8>| v.iter().eq(&[1, 2, 3])),
        ),
        from("set_into_vec", "{'a'}", is(vec![s("a")])),
        from("set_empty", "set()", is(Vec::<u8>::new())),
        from(
            "frozenset",
            "frozenset({1, 2})",
            satisfies(|v: &BTreeSet<u8>| v.len() == 2),
        ),
        // Not plain data: refused, by name where the pickle names a class.
        from("class_instance", "Point(1, 2)", refused::<PyValue>("Point")),
        from("dataclass", "Data(1, 'a')", refused::<PyValue>("Data")),
        from("int_subclass", "Sub(5)", refused::<PyValue>("Sub")),
        from(
            "datetime",
            "datetime.datetime(2024, 1, 2)",
            refused::<PyValue>("datetime.datetime"),
        ),
        from(
            "decimal",
            "decimal.Decimal('1.5')",
            refused::<PyValue>("Decimal"),
        ),
        from(
            "fraction",
            "fractions.Fraction(1, 3)",
            refused::<PyValue>("Fraction"),
        ),
        from(
            "ordered_dict",
            "collections.OrderedDict(a=1)",
            refused::<PyValue>("OrderedDict"),
        ),
        from("complex", "complex(1, 2)", refused::<PyValue>("complex")),
        from("range", "range(3)", refused::<PyValue>("range")),
        // (spelt __builtin__.long below protocol 3)
        from(
            "a_class",
            "int",
            refused::<PyValue>("refusing the Python global"),
        ),
        from("a_function", "os.system", refused::<PyValue>("system")),
        from("evil_reduce", "Evil()", refused::<PyValue>("system")),
        from(
            "recursive",
            "recursive()",
            refused::<PyValue>("contains itself"),
        ),
        from(
            "wrong_type",
            "'text'",
            refused::<i64>("invalid type: string \"text\", expected i64"),
        ),
        from(
            "missing_field",
            "{'id': 1}",
            refused::<Record>("missing field `name`"),
        ),
    ]
}

/// `PyValue`s decoded from Python go back to Python twice: re-encoded by Rust, and as their
/// `Display` text; both must equal the original, dict order included.
const PY_VALUE_EXPRS: &[(&str, &str)] = &[
    (
        "scalars",
        "[None, True, False, 0, -1, 2**63, -2**127, 1.5, -0.0, inf, nan, 'é', b'\\x00\\'']",
    ),
    (
        "big_ints",
        "[2**127, -2**127 - 1, 2**128, 3**300, -(7**500)]",
    ),
    (
        "containers",
        "{'t': (1, (2,), ()), 's': {1, 'a', (2, 3)}, 'f': frozenset({b'x'}), 'e': [set(), frozenset(), {}, [], ()]}",
    ),
    (
        "dict_order",
        "{'z': 1, 'a': 2, 3: 'c', (1, 'k'): None, frozenset({1}): 0, None: 1, 2.5: 2, b'b': 3}",
    ),
    ("shared", "shared()"),
    (
        "quotes",
        r#"['\'', '"', '\\', '\n\t\r\x7f\x80\u2028\U0001f980', b'\x7f\x80\'"\\']"#,
    ),
];

// ------------------------------------------------------------------------------------------
// Rust -> Python
// ------------------------------------------------------------------------------------------

struct ToPython {
    name: String,
    /// Compare dicts in order too.
    ordered: bool,
    expected: String,
    pickle: Vec<u8>,
}

fn to<T: Serialize + ?Sized>(name: &str, expected: &str, value: &T) -> ToPython {
    ToPython {
        name: name.to_owned(),
        ordered: false,
        expected: expected.to_owned(),
        pickle: encode(value),
    }
}

#[derive(Serialize)]
struct Point {
    x: i32,
    y: i32,
    label: Option<String>,
}

#[derive(Serialize)]
struct Meters(f64);

#[derive(Serialize)]
struct Unit;

#[derive(Serialize)]
struct Pair(u8, &'static str);

#[derive(Serialize)]
enum Shape {
    Empty,
    Circle(f64),
    Line(Point, Point),
    Rect { w: u32, h: u32 },
}

#[derive(Serialize)]
struct WithBytes {
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    list: Vec<u8>,
}

fn to_python_cases() -> Vec<ToPython> {
    let p = |x, y| Point { x, y, label: None };
    let mut cases = vec![
        to("i8", "(-128, 127)", &(i8::MIN, i8::MAX)),
        to("i16", "(-2**15, 2**15 - 1)", &(i16::MIN, i16::MAX)),
        to("i32", "(-2**31, 2**31 - 1)", &(i32::MIN, i32::MAX)),
        to("i64", "(-2**63, 2**63 - 1)", &(i64::MIN, i64::MAX)),
        to(
            "u8_u16_u32",
            "(255, 65535, 2**32 - 1)",
            &(u8::MAX, u16::MAX, u32::MAX),
        ),
        to("u64", "(2**63, 2**64 - 1)", &(1u64 << 63, u64::MAX)),
        to("i128", "(-2**127, 2**127 - 1)", &(i128::MIN, i128::MAX)),
        to("u128", "(2**128 - 1, 2**127)", &(u128::MAX, 1u128 << 127)),
        to(
            "small_ints",
            "[0, 1, -1, 255, 256, 65535, 65536, -129, -256, -257]",
            &vec![0i64, 1, -1, 255, 256, 65535, 65536, -129, -256, -257],
        ),
        to(
            "floats",
            "[1.5, -0.0, 1e300, 5e-324, inf, -inf, nan]",
            &vec![
                1.5,
                -0.0,
                1e300,
                5e-324,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
            ],
        ),
        to("f32", "0.10000000149011612", &0.1f32),
        to("bools", "[True, False]", &vec![true, false]),
        to("unit", "None", &()),
        to("unit_struct", "None", &Unit),
        to("options", "[None, 3]", &vec![None, Some(3)]),
        to("str", "'héllo wörld ✓ 🦀'", "héllo wörld ✓ 🦀"),
        to(
            "str_escapes",
            r"'\\ \n \x00 \ud7ff \ue000'",
            "\\ \n \0 \u{d7ff} \u{e000}",
        ),
        to("str_empty", "''", ""),
        to("str_long", "'y' * 70000", &"y".repeat(70000)),
        to("char", "'🦀'", &'🦀'),
        to(
            "bytes",
            "bytes(range(256))",
            &ByteBuf::from((0..=255).collect::<Vec<u8>>()),
        ),
        to("bytes_empty", "b''", &ByteBuf::new()),
        to(
            "bytes_16mib",
            "b'\\xa5' * (16 << 20)",
            &ByteBuf::from(vec![0xa5; 16 << 20]),
        ),
        to("vec_u8_is_a_list", "[1, 2]", &vec![1u8, 2]),
        to(
            "bytes_field",
            "{'payload': b'\\x01\\x02', 'list': [3]}",
            &WithBytes {
                payload: vec![1, 2],
                list: vec![3],
            },
        ),
        to("list", "['a', 'b']", &vec!["a", "b"]),
        to(
            "list_long",
            "list(range(2500))",
            &(0..2500).collect::<Vec<u32>>(),
        ),
        to("list_empty", "[]", &Vec::<u8>::new()),
        to("array_is_a_tuple", "(1, 2, 3)", &[1u8, 2, 3]),
        to(
            "tuples",
            "(None, (1,), (1, 'a', 2.5), ((1, 2), [3]))",
            &((), (1,), (1, "a", 2.5), ((1, 2), vec![3])),
        ),
        to("set_is_a_list", "[1, 2, 3]", &BTreeSet::from([3, 1, 2])),
        to(
            "dict",
            "{'a': [1, 2], 'b': []}",
            &HashMap::from([("a", vec![1, 2]), ("b", vec![])]),
        ),
        to(
            "dict_large",
            "{str(i): i for i in range(1500)}",
            &(0..1500)
                .map(|i| (i.to_string(), i))
                .collect::<HashMap<_, _>>(),
        ),
        to(
            "dict_int_keys",
            "{-1: 'm', 2**40: 'b'}",
            &BTreeMap::from([(-1i64, "m"), (1 << 40, "b")]),
        ),
        to(
            "dict_tuple_keys",
            "{(1, 2): True}",
            &HashMap::from([((1, 2), true)]),
        ),
        to("dict_empty", "{}", &HashMap::<String, u8>::new()),
        to(
            "struct",
            "{'x': 1, 'y': -2, 'label': 'p'}",
            &Point {
                x: 1,
                y: -2,
                label: Some("p".into()),
            },
        ),
        to("newtype_struct", "2.5", &Meters(2.5)),
        to("tuple_struct", "(1, 'one')", &Pair(1, "one")),
        to("enum_unit", "'Empty'", &Shape::Empty),
        to("enum_newtype", "{'Circle': 1.0}", &Shape::Circle(1.0)),
        to(
            "enum_tuple",
            "{'Line': ({'x': 0, 'y': 1, 'label': None}, {'x': 2, 'y': 3, 'label': None})}",
            &Shape::Line(p(0, 1), p(2, 3)),
        ),
        to(
            "enum_struct",
            "{'Rect': {'w': 3, 'h': 4}}",
            &Shape::Rect { w: 3, h: 4 },
        ),
        to(
            "py_set",
            "{1, 'a', (2, 3)}",
            &PyValue::Set(vec![
                PyValue::Int(1),
                PyValue::Str("a".into()),
                PyValue::Tuple(vec![PyValue::Int(2), PyValue::Int(3)]),
            ]),
        ),
        to(
            "py_frozenset",
            "frozenset({b'x'})",
            &PyValue::FrozenSet(vec![PyValue::Bytes(b"x".to_vec())]),
        ),
        to(
            "py_empty_sets",
            "(set(), frozenset())",
            &PyValue::Tuple(vec![PyValue::Set(vec![]), PyValue::FrozenSet(vec![])]),
        ),
        to(
            "py_big_ints",
            "[3**300, -(7**500), 2**128, -2**128]",
            &PyValue::List(vec![
                PyValue::BigInt(big_power(3, 300, false)),
                PyValue::BigInt(big_power(7, 500, true)),
                PyValue::BigInt("340282366920938463463374607431768211456".into()),
                PyValue::BigInt("-340282366920938463463374607431768211456".into()),
            ]),
        ),
        to(
            "py_set_large",
            "set(range(2500))",
            &PyValue::Set((0..2500).map(PyValue::Int).collect()),
        ),
    ];
    let mut ordered = to(
        "py_dict_order",
        "{'z': 1, 'a': 2, 3: 'c', None: (1,)}",
        &PyValue::Dict(vec![
            (PyValue::Str("z".into()), PyValue::Int(1)),
            (PyValue::Str("a".into()), PyValue::Int(2)),
            (PyValue::Int(3), PyValue::Str("c".into())),
            (PyValue::None, PyValue::Tuple(vec![PyValue::Int(1)])),
        ]),
    );
    ordered.ordered = true;
    cases.push(ordered);
    cases
}

/// `base ** exp` (negated) in decimal, computed here so that Python checks the digits.
fn big_power(base: u32, exp: u32, negative: bool) -> String {
    let mut digits = vec![1u32]; // little-endian base 10
    for _ in 0..exp {
        let mut carry = 0;
        for d in &mut digits {
            let v = *d * base + carry;
            *d = v % 10;
            carry = v / 10;
        }
        while carry > 0 {
            digits.push(carry % 10);
            carry /= 10;
        }
    }
    let text: String = digits
        .iter()
        .rev()
        .map(|d| char::from(b'0' + *d as u8))
        .collect();
    if negative { format!("-{text}") } else { text }
}

// ------------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------------

#[test]
fn pickle_interoperates_with_cpython() {
    for python in interpreters() {
        println!("checking {}", label(&python));
        let py_values = check_python_to_rust(&python);
        check_rust_to_python(&python, py_values);
    }
}

/// Returns what the `PyValue` cases decoded to, with their original pickles.
fn check_python_to_rust(python: &Python) -> Vec<(String, PyValue, Vec<u8>)> {
    let cases = from_python_cases();
    let mut input = Vec::new();
    for case in &cases {
        put_record(&mut input, case.name.as_bytes());
        put_record(&mut input, case.expr.as_bytes());
        put_record(&mut input, case.protocols.as_bytes());
    }
    for (name, expr) in PY_VALUE_EXPRS {
        put_record(&mut input, format!("pyvalue_{name}").as_bytes());
        put_record(&mut input, expr.as_bytes());
        put_record(&mut input, b"default,5");
    }
    let output = records(&run(python, DUMP, input));
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut py_values = Vec::new();
    for rec in output.chunks(3) {
        let (name, protocol, pickle) = (String::from_utf8_lossy(&rec[0]), &rec[1], &rec[2]);
        let protocol = String::from_utf8_lossy(protocol);
        if let Some(short) = name.strip_prefix("pyvalue_") {
            match Pickle::decode::<PyValue>(pickle) {
                Ok(v) => py_values.push((format!("{short}_{protocol}"), v, pickle.clone())),
                Err(e) => failures.push(format!("{name} (protocol {protocol}): {e}")),
            }
            continue;
        }
        let case = cases.iter().find(|c| c.name == name).unwrap();
        checked += 1;
        if let Err(why) = (case.check)(pickle) {
            failures.push(format!("{name} (protocol {protocol}): {why}"));
        }
    }
    let expected: usize = cases.iter().map(|c| c.protocols.split(',').count()).sum();
    assert_eq!(
        checked,
        expected,
        "{}: not every case came back",
        label(python)
    );
    assert_eq!(py_values.len(), 2 * PY_VALUE_EXPRS.len(), "{failures:#?}");
    assert!(
        failures.is_empty(),
        "{}: Python -> Rust failures:\n{}",
        label(python),
        failures.join("\n")
    );
    println!("  Python -> Rust: {checked} typed decodes ok");
    py_values
}

fn check_rust_to_python(python: &Python, py_values: Vec<(String, PyValue, Vec<u8>)>) {
    let mut cases = to_python_cases();
    for (name, value, original) in py_values {
        // Python's value == Rust's re-encoding of what it decoded
        let expr_index = PY_VALUE_EXPRS
            .iter()
            .position(|(n, _)| name.starts_with(&format!("{n}_")))
            .unwrap();
        let mut again = to(
            &format!("pyvalue_reencoded_{name}"),
            PY_VALUE_EXPRS[expr_index].1,
            &value,
        );
        again.ordered = true;
        cases.push(again);
        // Python's value == what Display says it is
        cases.push(ToPython {
            name: format!("pyvalue_display_{name}"),
            ordered: true,
            expected: value.to_string(),
            pickle: original,
        });
    }
    let mut input = Vec::new();
    for case in &cases {
        put_record(&mut input, case.name.as_bytes());
        put_record(&mut input, if case.ordered { b"ordered" } else { b"any" });
        put_record(&mut input, case.expected.as_bytes());
        put_record(&mut input, &case.pickle);
    }
    let output = String::from_utf8(run(python, LOAD, input)).unwrap();
    let lines: Vec<&str> = output.lines().collect();
    let failures: Vec<&&str> = lines.iter().filter(|l| !l.starts_with("ok ")).collect();
    assert!(
        failures.is_empty(),
        "{}: Rust -> Python failures:\n{}",
        label(python),
        failures
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        lines.len(),
        cases.len(),
        "{}: not every case was checked",
        label(python)
    );
    println!("  Rust -> Python: {} loads ok", lines.len());
}
