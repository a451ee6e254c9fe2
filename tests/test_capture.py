"""Stream capture (CUDA graphs) under the documented capture rules, and under a compute limit.

The simulated driver follows the CUDA programming guide's rules for "potentially unsafe" calls
while a capture is open (issue 15, path 6): in global mode an event query/synchronize, a query
or synchronize of another stream, or a context synchronize fails with
CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (900) and invalidates the capture, whose
cuStreamEndCapture then returns CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (901); an event last
recorded inside a capture answers CUDA_ERROR_CAPTURED_EVENT (907). libflexai's compute gate
must make no such call while any capture is open, and must still hold graph replays to the
slice's share. No test asserts a wall-clock duration.
"""

from __future__ import annotations

import json
import textwrap

from sim_support import clients, sim_dir, sim_libs  # noqa: F401  (fixtures)
from libflexai_support import libs  # noqa: F401  (fixture)
from test_compute_share import TOL, Slices, compute_client, window_shares  # noqa: F401

SETUP = textwrap.dedent("""
    import json, threading
    ctx = primary(0)
    f = spin_function()
    s = ok(d.cuStreamCreate(0))
    other = ok(d.cuStreamCreate(0))
    ev = ok(d.cuEventCreate(0))
    ok(d.cuEventRecord(ev, other))
    M = d.CUstreamCaptureMode
    def code(r):
        return int(r[0])
    def capture(mode, during):
        ok(d.cuStreamBeginCapture(s, mode))
        spin(f, s, 1_000_000)
        got = during()
        status = int(ok(d.cuStreamIsCapturing(s)))
        r = d.cuStreamEndCapture(s)
        return [got, status, int(r[0])]
    def in_thread(fn):
        box = []
        def run():
            ok(d.cuCtxSetCurrent(ctx))
            box.append(fn())
        t = threading.Thread(target=run); t.start(); t.join()
        return box[0]
""")


def test_sim_unsafe_calls_during_capture_invalidate_it(clients):  # noqa: F811
    r = clients.run_python(SETUP + textwrap.dedent("""
        out = {}
        G, TL, R = (M.CU_STREAM_CAPTURE_MODE_GLOBAL, M.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                    M.CU_STREAM_CAPTURE_MODE_RELAXED)
        out["global_event_query"] = capture(G, lambda: code(d.cuEventQuery(ev)))
        out["global_event_sync"] = capture(G, lambda: code(d.cuEventSynchronize(ev)))
        out["global_other_stream_query"] = capture(G, lambda: code(d.cuStreamQuery(other)))
        out["global_other_stream_sync"] = capture(G, lambda: code(d.cuStreamSynchronize(other)))
        out["global_ctx_sync"] = capture(G, lambda: code(d.cuCtxSynchronize()))
        out["global_own_stream_sync"] = capture(G, lambda: code(d.cuStreamSynchronize(s)))
        out["global_launch_only"] = capture(G, lambda: 0)
        out["global_other_thread_query"] = capture(G, lambda: in_thread(lambda: code(d.cuEventQuery(ev))))
        out["thread_local_other_thread_query"] = capture(
            TL, lambda: in_thread(lambda: code(d.cuEventQuery(ev))))
        out["thread_local_own_query"] = capture(TL, lambda: code(d.cuEventQuery(ev)))
        out["relaxed_capture_query"] = capture(R, lambda: code(d.cuEventQuery(ev)))
        def relaxed_thread():
            old = ok(d.cuThreadExchangeStreamCaptureMode(R))
            rc = code(d.cuEventQuery(ev))
            ok(d.cuThreadExchangeStreamCaptureMode(old))
            return rc
        out["global_capture_relaxed_thread_query"] = capture(G, relaxed_thread)
        # an event recorded inside a (successful) capture
        captured = ok(d.cuEventCreate(0))
        def record_inside():
            return code(d.cuEventRecord(captured, s))
        out["record_inside"] = capture(G, record_inside)
        out["captured_event_query"] = code(d.cuEventQuery(captured))
        out["captured_event_sync"] = code(d.cuEventSynchronize(captured))
        ok(d.cuEventRecord(captured, other))
        out["rerecorded_query"] = code(d.cuEventQuery(captured))
        # after an invalidated capture, a new one on the same stream works
        out["after"] = capture(G, lambda: 0)
        print(json.dumps(out))
    """))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    invalidated = [900, 2, 901]  # the call fails, the capture reads invalidated, EndCapture fails
    for k in ("global_event_query", "global_event_sync", "global_other_stream_query",
              "global_other_stream_sync", "global_ctx_sync", "global_own_stream_sync",
              "global_other_thread_query", "thread_local_own_query"):
        assert out[k] == invalidated, (k, out[k])
    for k in ("global_launch_only", "thread_local_other_thread_query", "relaxed_capture_query",
              "global_capture_relaxed_thread_query", "record_inside", "after"):
        assert out[k] == [0, 1, 0], (k, out[k])
    assert out["captured_event_query"] == 907 and out["captured_event_sync"] == 907
    assert out["rerecorded_query"] == 0


def test_capture_under_hard_compute_limit_succeeds_and_replays_are_held(libs, compute_client,  # noqa: F811
                                                                         tmp_path):
    """torch.cuda.graph-style: begin capture (global mode) -> 10 launches -> end -> instantiate
    -> replay for 3 s, under FLEXAI_COMPUTE=30 FLEXAI_COMPUTE_MODE=hard. The client fails if
    the capture does; the replays' device time over wall time stays at the cap."""
    slices = Slices(tmp_path, libs, compute_client, "cuda")
    try:
        slices.start([{"share": 30, "kernel": "1000", "mode": "hard", "api": "graph",
                       "graph_nodes": 10}], seconds=3)
        results = slices.results()
        _, util = window_shares(results, 1.0, 3.0)
        assert abs(util - 30) <= TOL, util
    finally:
        slices.stop()


def test_launches_beside_an_open_capture_stay_gated(libs, compute_client, tmp_path):  # noqa: F811
    """A capture left open on another stream (relaxed, so that the client itself may keep
    launching): the gate's own calls must not break it, and the launches outside it are still
    held to the hard cap."""
    slices = Slices(tmp_path, libs, compute_client, "cuda")
    try:
        slices.start([{"share": 30, "kernel": "1000", "mode": "hard", "api": "launch",
                       "side_capture": True}], seconds=3)
        results = slices.results()
        _, util = window_shares(results, 1.0, 3.0)
        assert abs(util - 30) <= TOL, util
        assert results[0]["side_capture_end"] == 0, results[0]
    finally:
        slices.stop()
