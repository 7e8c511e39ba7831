#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (run from anywhere; stdlib only).

Each seed is a small, named input in the format its target's header comment describes.
"""
import hashlib
import hmac
import os
import pickle
import struct
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def header(n):
    """CPython's _send_bytes header."""
    return struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)


def frame(payload):
    return header(len(payload)) + payload


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def mac(digest, key, message):
    return hmac.new(key, message, digest).digest()


DIGESTS = ["md5", "sha256", "sha384", "sha3_256", "sha3_384"]


def frame_seeds():
    write("frame", "empty", b"")
    write("frame", "short_5", header(5))
    write("frame", "short_max", header(0x7FFFFFFF))
    write("frame", "long_2g", header(0x80000000))
    write("frame", "long_max", struct.pack("!iQ", -1, 2**64 - 1))
    write("frame", "long_small", struct.pack("!iQ", -1, 5) + b"hello")
    write("frame", "long_truncated", b"\xff\xff\xff\xff\x00\x00\x01")
    write("frame", "minus_2", b"\xff\xff\xff\xfe")
    write("frame", "int_min", b"\x80\x00\x00\x00")
    write("frame", "three_bytes", b"\x00\x00\x01")


def auth_seeds():
    def seed(name, key, message, answer):
        write("auth", name, bytes([len(key)]) + key + bytes([len(message)]) + message + answer)

    key = b"secret password"
    challenge = b"{sha256}" + bytes(range(40))
    for d in DIGESTS:
        m = ("{%s}" % d).encode() + bytes(range(40))
        seed("modern_%s" % d, key, m, ("{%s}" % d).encode() + mac(d, key, m))
    legacy = bytes(range(20))
    seed("legacy_md5", key, legacy, mac("md5", key, legacy))
    seed("bare_md5_answer_to_modern", key, challenge, mac("md5", key, challenge))
    seed("sha3_384_answer", key, challenge, b"{sha3_384}" + mac("sha3_384", key, challenge))
    seed("wrong_answer", key, challenge, b"{sha256}" + bytes(32))
    seed("short_answer", key, challenge, b"{sha256}short!")
    seed("unknown_digest", key, b"{sha1}" + bytes(40), b"{sha1}" + bytes(20))
    seed("no_curly", b"", b"{sha256" + bytes(40), b"")
    seed("challenge_msg", key, b"#CHALLENGE#{md5}" + bytes(40), b"")
    seed("challenge_short", key, b"#CHALLENGE#" + bytes(19), b"")
    seed("empty_key", b"", challenge, b"{md5}" + mac("md5", b"", challenge))
    seed("long_key", bytes(range(200)), challenge, b"{sha384}" + mac("sha384", bytes(range(200)), challenge))


# stream: [max] [n] [op; n] script; script tags F0..F7 (see fuzz_targets/stream.rs)
MAX_1MIB, MAX_0, MAX_1, MAX_12, MAX_100, MAX_UNLIMITED = 0, 1, 2, 3, 4, 10
RECV, RECV_MAX, INTO, POSTCARD, WITH_FDS, PICKLE, TIMED, TIMED_POSTCARD, POLL, INTO_LARGE = range(10)


def op(kind, param=0):
    return bytes([(param << 4) | kind])


def stream(name, max_sel, ops, script):
    write("stream", name, bytes([max_sel, len(ops) - 1]) + b"".join(ops) + script)


def f1(payload):
    """A framed message (tag F1)."""
    return b"\xf1" + struct.pack("!H", len(payload)) + payload


def lit(b):
    """Literal bytes, escaped (tag F0), whatever they are."""
    return b"\xf0" + bytes([len(b)]) + b


def u24(n):
    return struct.pack("!I", n)[1:]


def stream_seeds():
    stream("three_frames", MAX_1MIB, [op(RECV)], f1(b"one") + f1(b"") + f1(b"three"))
    stream("raw_cpython_frames", MAX_1MIB, [op(RECV)], frame(b"a") + frame(b"bb"))
    stream("huge_short_length", MAX_1MIB, [op(RECV)], b"\x7f\xff\xff\xff" + b"xyz")
    stream("huge_long_length", MAX_1MIB, [op(RECV)], b"\xf4" + struct.pack("!Q", 2**63))
    stream("long_header_small", MAX_1MIB, [op(RECV)], b"\xf4" + struct.pack("!Q", 5) + b"hello")
    stream("minus_one_truncated", MAX_1MIB, [op(RECV)], b"\xf0\x06\xff\xff\xff\xff\x00\x00")
    stream("minus_two", MAX_1MIB, [op(RECV)], b"\xf0\x04\xff\xff\xff\xfe")
    stream("truncated_payload", MAX_1MIB, [op(RECV)], b"\x00\x00\x00\x10abc")
    stream("truncated_header", MAX_1MIB, [op(RECV)], b"\x00\x00")
    stream("max_0", MAX_0, [op(RECV)], f1(b"") + f1(b"x"))
    stream("max_12", MAX_12, [op(RECV)], f1(b"x" * 12) + f1(b"x" * 13))
    stream("recv_max", MAX_1MIB, [op(RECV_MAX, 3)], f1(b"0123456789abcdef") + f1(b"x" * 17))
    stream("large_message", MAX_1MIB, [op(RECV)], b"\xf3" + u24(100_000) + b"q" + f1(b"after"))
    stream("large_into", MAX_1MIB, [op(INTO_LARGE, 1), op(INTO, 8)], b"\xf3" + u24(200_000) + b"q" + f1(b"after"))
    stream("into_short", MAX_1MIB, [op(INTO, 2), op(INTO, 3)], f1(b"0123456789") + f1(b"x"))
    stream("into_offset", MAX_1MIB, [op(INTO, 13), op(INTO, 14)], f1(b"abc") + f1(b"def"))
    stream("boundary_64k", MAX_1MIB, [op(RECV)], b"\xf3" + u24(65_532) + b"a" + b"\xf3" + u24(65_533) + b"b")
    stream("too_large_1mib", MAX_1MIB, [op(RECV)], b"\xf3" + u24((1 << 20) + 1) + b"z")
    stream("pause_small", MAX_1MIB, [op(TIMED), op(RECV)], b"\x00\x00\x00\x05ab\xf6cde" + f1(b"next"))
    stream(
        "pause_large_then_max",
        MAX_1MIB,
        [op(TIMED), op(RECV_MAX, 3)],
        lit(header(150_000)) + b"\xf2a" + u24(70_000) + b"\xf6\xf2a" + u24(80_000),
    )
    stream("pause_large_then_into", MAX_1MIB, [op(TIMED), op(INTO, 2)],
           lit(header(150_000)) + b"\xf2a" + u24(70_000) + b"\xf6\xf2a" + u24(80_000))
    stream("poll_long_header_max", MAX_1MIB, [op(RECV), op(POLL)], lit(frame(b"a") + b"\xff" * 12))
    # Unlimited (`set_max_message_size(u64::MAX)`): the longest length is no longer refused.
    stream("unlimited_long_header_max", MAX_UNLIMITED, [op(RECV)], b"\xf4" + b"\xff" * 8)
    stream("unlimited_long_header_max_recv_max", MAX_UNLIMITED, [op(RECV_MAX, 10)], b"\xf4" + b"\xff" * 8)
    stream("unlimited_large", MAX_UNLIMITED, [op(RECV)], b"\xf3" + u24(200_000) + b"u" + f1(b"after"))
    stream("poll", MAX_1MIB, [op(POLL), op(RECV)], f1(b"p") + f1(b"q"))
    plain = bytes.fromhex("0705026869020102010" "1ac0201050" "2c3a901010101")
    stream("postcard_plain", MAX_1MIB, [op(POSTCARD)], f1(plain) + f1(b"\x00") + f1(plain + b"x"))
    stream("postcard_timed", MAX_1MIB, [op(TIMED_POSTCARD)], f1(plain) + b"\xf6" + f1(plain))
    # WithFds { one: Some(#0), many: [#1, #2], conn: None }
    stream("fds_attached", MAX_1MIB, [op(WITH_FDS)], b"\xf5\x02" + f1(b"\x01\x00\x02\x01\x02\x00") + f1(b"\x00\x00\x00"))
    stream("fds_missing", MAX_1MIB, [op(WITH_FDS)], f1(b"\x01\x05\x00\x00"))
    stream("fds_mid_message", MAX_1MIB, [op(RECV)], b"\x00\x00\x00\x06abc\xf5\x00def" + f1(b"g"))
    # WithFds { one: None, many: [], conn: Some(fd #0, readable, writable, max 5,
    # pending: a header) }
    conn = b"\x00\x00" + b"\x01\x00\x01\x01\x05" + b"\x04" + header(1)
    stream("connection_in_message", MAX_1MIB, [op(WITH_FDS)], b"\xf5\x00" + f1(conn))
    for proto in range(0, 6):
        value = [1, -2, 2**70, 1.5, "é", b"\x00\xff", None, True, (1, (2,)), {"k": [1]}, {3}]
        stream("pickle_p%d" % proto, MAX_1MIB, [op(PICKLE)], f1(pickle.dumps(value, protocol=proto)))
    stream("pickle_garbage", MAX_1MIB, [op(PICKLE)], f1(b"\x80\x05\x95\xff\xff\xff\xff\xff\xff\xff\x7f."))
    stream("mixed_ops", MAX_100, [op(POLL), op(RECV_MAX, 5), op(INTO, 3), op(POSTCARD), op(PICKLE), op(TIMED)],
           f1(b"a" * 10) + f1(plain) + f1(pickle.dumps(1)) + f1(b"z" * 101))


# handshake: [role | key length << 1] [key] steps (see fuzz_targets/handshake.rs)
def handshake_seeds():
    key = b"k"

    def seed(name, connects, steps):
        first = ((len(key) << 1) | (0 if connects else 1))
        write("handshake", name, bytes([first]) + key + steps)

    right = bytes([0])
    payload = bytes(range(40))
    for connects, role in [(True, "client"), (False, "listener")]:
        deliver = bytes([1]) + payload + right + right  # sha256 challenge, welcome
        answer = bytes([1]) + right  # answer with sha256
        steps = deliver + answer if connects else answer + deliver
        seed("%s_ok" % role, connects, steps)
        for d in range(6):
            a = bytes([d]) + right
            seed("%s_answer_digest_%d" % (role, d), connects, deliver + a if connects else a + deliver)
        for d in range(5):
            dl = bytes([d]) + payload + right + right
            seed("%s_challenge_digest_%d" % (role, d), connects, dl + answer if connects else answer + dl)
        wrong_answer = bytes([1, 4, 7])  # flip bit 7
        seed("%s_wrong_answer" % role, connects, deliver + wrong_answer if connects else wrong_answer)
        legacy = bytes([1]) + payload + bytes([4, 0]) + bytes(range(20)) + right
        seed("%s_legacy_challenge" % role, connects, legacy + answer if connects else answer + legacy)
        rejected = bytes([1]) + payload + right + bytes([4])
        seed("%s_rejected" % role, connects, rejected if connects else answer + rejected)
        framed = bytes([1]) + payload + bytes([5]) + struct.pack("!H", 300) + bytes(300)
        seed("%s_long_message" % role, connects, framed if connects else answer + framed)
        raw = bytes([1]) + payload + bytes([6, 8]) + b"\x00\x00\x00\x04#WEL"
        seed("%s_raw" % role, connects, raw if connects else answer + raw)
        closed = bytes([1]) + payload + bytes([7])
        seed("%s_close" % role, connects, closed if connects else answer + closed)


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    frame_seeds()
    auth_seeds()
    stream_seeds()
    handshake_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))), "seeds")


if __name__ == "__main__":
    main()
