"""Aerospike's official Python client against aerospike-standin: the judge of
the stand-in's fidelity. Starts the binary on a free port, runs every check,
prints one line per check, exits 1 on the first failure.

    python conformance.py path/to/aerospike-standin
"""

import socket
import subprocess
import sys
import time
import warnings

import aerospike
from aerospike import exception as ex

NS, SET = "test", "conformance"
# meta["ttl"] is what the checks read; the client warns it will be renamed.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary):
    port = free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("aerospike-standin did not start")


def expect_error(kind, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except kind:
        return
    except ex.AerospikeError as e:
        raise AssertionError(f"expected {kind.__name__}, got {type(e).__name__}: {e}")
    raise AssertionError(f"expected {kind.__name__}, got success")


def checks(c):
    key = (NS, SET, "visitor-1")

    def put_get():
        c.put(key, {"sid": "s-1", "n": 7, "f": 2.5, "raw": bytearray(b"\x00\xff")})
        _, meta, bins = c.get(key)
        assert bins == {"sid": "s-1", "n": 7, "f": 2.5, "raw": b"\x00\xff"}, bins
        assert meta["gen"] == 1, meta

    def generation_increments():
        c.put(key, {"n": 8})
        _, meta, bins = c.get(key)
        assert meta["gen"] == 2 and bins["n"] == 8 and bins["sid"] == "s-1", (meta, bins)

    def select_bins():
        _, _, bins = c.select(key, ["sid"])
        assert bins == {"sid": "s-1"}, bins

    def exists():
        _, meta = c.exists(key)
        assert meta is not None and meta["gen"] == 2, meta
        _, meta = c.exists((NS, SET, "nobody"))
        assert meta is None, meta

    def missing_record():
        expect_error(ex.RecordNotFound, c.get, (NS, SET, "nobody"))

    def get_by_the_clients_digest():
        digest = aerospike.calc_digest(NS, SET, "visitor-1")
        k, _, bins = c.get((NS, SET, None, digest))
        assert bins["sid"] == "s-1", bins
        assert bytes(k[3]) == bytes(digest)

    def integer_keys():
        ik = (NS, SET, 42)
        c.put(ik, {"v": "int"})
        assert c.get(ik)[2] == {"v": "int"}
        assert c.get((NS, SET, None, aerospike.calc_digest(NS, SET, 42)))[2] == {"v": "int"}
        # A string "42" is another record.
        expect_error(ex.RecordNotFound, c.get, (NS, SET, "42"))

    def ttl_and_expiry():
        tk = (NS, SET, "short-lived")
        c.put(tk, {"sid": "x"}, meta={"ttl": 1})
        _, meta, _ = c.get(tk)
        assert 0 < meta["ttl"] <= 1, meta
        time.sleep(2.1)
        expect_error(ex.RecordNotFound, c.get, tk)

    def touch_renews_ttl():
        tk = (NS, SET, "touched")
        c.put(tk, {"sid": "x"}, meta={"ttl": 2})
        c.touch(tk, 100)
        _, meta, _ = c.get(tk)
        assert 90 <= meta["ttl"] <= 100 and meta["gen"] == 2, meta
        expect_error(ex.RecordNotFound, c.touch, (NS, SET, "nobody"), 10)

    def never_expires():
        nk = (NS, SET, "forever")
        c.put(nk, {"sid": "x"}, meta={"ttl": aerospike.TTL_NEVER_EXPIRE})
        assert c.get(nk)[1]["ttl"] in (0xFFFFFFFF, -1), c.get(nk)[1]

    def create_only():
        expect_error(ex.RecordExistsError, c.put, key, {"n": 1},
                     policy={"exists": aerospike.POLICY_EXISTS_CREATE})
        c.put((NS, SET, "fresh"), {"n": 1}, policy={"exists": aerospike.POLICY_EXISTS_CREATE})

    def update_only():
        expect_error(ex.RecordNotFound, c.put, (NS, SET, "absent"), {"n": 1},
                     policy={"exists": aerospike.POLICY_EXISTS_UPDATE})
        c.put(key, {"n": 9}, policy={"exists": aerospike.POLICY_EXISTS_UPDATE})

    def replace():
        c.put(key, {"only": 1}, policy={"exists": aerospike.POLICY_EXISTS_REPLACE})
        assert c.get(key)[2] == {"only": 1}

    def generation_check():
        _, meta = c.exists(key)
        gen = meta["gen"]
        expect_error(ex.RecordGenerationError, c.put, key, {"only": 2},
                     meta={"gen": gen + 5}, policy={"gen": aerospike.POLICY_GEN_EQ})
        c.put(key, {"only": 3}, meta={"gen": gen}, policy={"gen": aerospike.POLICY_GEN_EQ})
        assert c.get(key)[1]["gen"] == gen + 1

    def delete():
        c.remove(key)
        expect_error(ex.RecordNotFound, c.get, key)
        expect_error(ex.RecordNotFound, c.remove, key)

    def unknown_namespace():
        expect_error(ex.AerospikeError, c.put, ("nope", SET, "k"), {"a": 1})

    send_key = {"key": aerospike.POLICY_KEY_SEND}
    scan_set = "scanned"
    n_scan = 300

    def fill_scan_set():
        for i in range(n_scan):
            c.put((NS, scan_set, f"v-{i}"), {"sid": f"s-{i}"}, meta={"ttl": 600},
                  policy=send_key)
        # Another set, a record without a stored key, and an expiring one.
        c.put((NS, "other", "v-0"), {"sid": "elsewhere"}, policy=send_key)
        c.put((NS, scan_set, "no-key"), {"sid": "anonymous"})
        c.put((NS, scan_set, "expiring"), {"sid": "gone"}, meta={"ttl": 1}, policy=send_key)
        time.sleep(2.1)

    def scan_whole_set():
        q = c.query(NS, scan_set)
        got = {}
        for key, meta, bins in q.results():
            got[key[2]] = (bins["sid"], meta["gen"], meta["ttl"])
        assert len(got) == n_scan + 1, len(got)
        assert got[None][0] == "anonymous", got[None]
        assert all(got[f"v-{i}"][0] == f"s-{i}" for i in range(n_scan))
        assert all(0 < got[f"v-{i}"][2] <= 600 for i in range(n_scan)), got["v-0"]

    def scan_by_partition():
        seen = {}
        for begin in range(0, 4096, 512):
            q = c.query(NS, scan_set)
            pf = {"partition_filter": {"begin": begin, "count": 512}}
            for key, _, bins in q.results(policy=pf):
                pid = int.from_bytes(bytes(key[3])[:2], "little") & 4095
                assert begin <= pid < begin + 512, (begin, pid)
                assert key[2] not in seen, key
                seen[key[2]] = bins["sid"]
        assert len(seen) == n_scan + 1, len(seen)

    def scan_selected_bins_and_no_bins():
        q = c.query(NS, "other")
        q.select("sid")
        assert [b for _, _, b in q.results()] == [{"sid": "elsewhere"}]
        q = c.query(NS, "other")
        rows = q.results(options={"nobins": True})
        assert len(rows) == 1 and not rows[0][2], rows

    def scan_pages():
        q = c.query(NS, scan_set)
        q.paginate()
        seen = set()
        pages = 0
        while not q.is_done() and pages < 100:
            for key, _, _ in q.results(policy={"max_records": 50}):
                seen.add(bytes(key[3]))
            pages += 1
        assert q.is_done() and len(seen) == n_scan + 1, (pages, len(seen))

    return [put_get, generation_increments, select_bins, exists, missing_record,
            get_by_the_clients_digest, integer_keys, ttl_and_expiry,
            touch_renews_ttl, never_expires, create_only, update_only, replace,
            generation_check, delete, unknown_namespace, fill_scan_set,
            scan_whole_set, scan_by_partition, scan_selected_bins_and_no_bins, scan_pages]


def main():
    proc, port = start(sys.argv[1])
    try:
        c = aerospike.client({"hosts": [("127.0.0.1", port)],
                              "policies": {"timeout": 2000}}).connect()
        print(f"official Python client {aerospike.__name__} connected to the stand-in on port {port}")
        failed = 0
        for check in checks(c):
            try:
                check()
                print(f"  ok    {check.__name__}")
            except (AssertionError, ex.AerospikeError) as e:
                failed += 1
                print(f"  FAIL  {check.__name__}: {type(e).__name__}: {e}")
        c.close()
        if failed:
            sys.exit(f"{failed} conformance checks failed")
        print("conformance: all checks passed")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
