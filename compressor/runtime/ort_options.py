"""ONNX Runtime session options every session of ours starts from."""

from __future__ import annotations

from typing import Any

#: ORT's intra-op threads spin-wait after each run. A verification or accuracy session alternates with PyTorch,
#: and interleaved benchmark sessions alternate with each other: an idle session's spinning threads only steal
#: the cores the other side needs. Spinning changes how threads wait, never the results.
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions``: errors only in the log, no spinning, ``threads`` intra-op threads if given."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in NO_SPINNING.items():
        opts.add_session_config_entry(key, value)
    if threads:
        opts.intra_op_num_threads = int(threads)
    return opts
