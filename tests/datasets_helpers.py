"""Helpers for the dataset tests: tiny raw inputs in the genuine formats, a local HTTP server, builder runners."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import importlib
import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def load_builder(name: str):
    """The builder module ``extdm_diffusers.data.builders.<name>`` (``dataset_builders/<name>.py`` is its CLI)."""
    return importlib.import_module(f"extdm_diffusers.data.builders.{name}")


def write_avi(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """A real AVI (PNG codec: lossless, so tests can check pixel values) written by ffmpeg through imageio."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(str(path), format="FFMPEG", fps=fps, codec="png", pixelformat="rgb24",
                                macro_block_size=1, ffmpeg_log_level="error")
    for frame in frames:
        writer.append_data(np.ascontiguousarray(frame))
    writer.close()
    return path


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    """An MNIST idx file (gzipped when the name ends in .gz)."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single ``Range: bytes=N-`` requests (for resumed downloads)."""

    supports_range = True
    requests_seen: list = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.requests_seen.append((self.path, self.headers.get("Range")))
        range_header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not (self.supports_range and range_header and path.is_file()):
            return super().do_GET()
        start = int(range_header.split("=")[1].split("-")[0])
        data = path.read_bytes()
        if start >= len(data):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])


@contextlib.contextmanager
def serve_directory(directory: Path, supports_range: bool = True) -> Iterator[tuple[str, list]]:
    """Serve ``directory`` on 127.0.0.1 (a free port); yields (base URL, list of (path, Range) requests)."""
    seen: list = []
    handler = type("Handler", (_RangeHandler,), {"supports_range": supports_range, "requests_seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    finally:
        server.shutdown()
        server.server_close()


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def no_proxy_env() -> dict:
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def tf_example_class():
    """``tf.train.Example`` built with the real protobuf library from TensorFlow's example/feature.proto layout.

    Serializing through protobuf itself (not our decoder's mirror image) makes the test TFRecords genuine.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    FD = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="extdm_test_example.proto", package="tensorflow",
                                               syntax="proto3")

    def add_fields(msg, fields):
        for number, (field_name, field_type, label, type_name) in enumerate(fields, start=1):
            field = msg.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name

    bytes_list = proto.message_type.add(name="BytesList")
    add_fields(bytes_list, [("value", FD.TYPE_BYTES, FD.LABEL_REPEATED, None)])
    float_list = proto.message_type.add(name="FloatList")
    add_fields(float_list, [("value", FD.TYPE_FLOAT, FD.LABEL_REPEATED, None)])
    int64_list = proto.message_type.add(name="Int64List")
    add_fields(int64_list, [("value", FD.TYPE_INT64, FD.LABEL_REPEATED, None)])
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate(
        [("bytes_list", ".tensorflow.BytesList"), ("float_list", ".tensorflow.FloatList"),
         ("int64_list", ".tensorflow.Int64List")], start=1):
        feature.field.add(name=name, number=number, type=FD.TYPE_MESSAGE, label=FD.LABEL_OPTIONAL,
                          type_name=type_name, oneof_index=0)
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=FD.TYPE_MESSAGE, label=FD.LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    features.field.add(name="feature", number=1, type=FD.TYPE_MESSAGE, label=FD.LABEL_REPEATED,
                       type_name=".tensorflow.Features.FeatureEntry")
    example = proto.message_type.add(name="Example")
    example.field.add(name="features", number=1, type=FD.TYPE_MESSAGE, label=FD.LABEL_OPTIONAL,
                      type_name=".tensorflow.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def bair_example_bytes(example_class, frames: np.ndarray, seed: int = 0) -> bytes:
    """One BAIR-like trajectory: raw RGB frames under ``i/image_aux1/encoded`` plus the other BAIR features."""
    rng = np.random.default_rng(seed)
    example = example_class()
    for i, frame in enumerate(frames):
        example.features.feature[f"{i}/image_aux1/encoded"].bytes_list.value.append(frame.tobytes())
        example.features.feature[f"{i}/image_main/encoded"].bytes_list.value.append(frame[::-1].tobytes())
        example.features.feature[f"{i}/action"].float_list.value.extend(rng.random(4).tolist())
        example.features.feature[f"{i}/endeffector_pos"].float_list.value.extend(rng.random(3).tolist())
    return example.SerializeToString()
