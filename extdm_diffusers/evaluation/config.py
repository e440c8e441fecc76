"""What an evaluation run is asked to do: its settings, the protocol they resolve to, and the seed of every sample."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..benchmarks import Benchmark, BenchmarkDefinitionError, EvaluationProtocol, pipeline_benchmark

METHODS = ("extdm", "copy_last_frame", "autoencoder")
#: metric -> whether larger is better (the best-of-n pick: max for PSNR/SSIM, min for LPIPS, as the original)
FRAME_METRICS = {"psnr": True, "ssim": True, "lpips": False}
DTYPES = ("float32", "float16", "bfloat16")


class EvaluationError(RuntimeError):
    """A problem with the run's inputs or settings, reported by the CLI as one line (no traceback)."""


@dataclass
class EvaluationConfig:
    """Everything an evaluation run needs. ``None`` takes the benchmark's protocol value; ``benchmark`` (a registry
    name or a benchmark file) defaults to the one the pipeline records."""

    pipeline: str
    dataset_dir: str
    benchmark: Optional[str] = None
    output_dir: str = "evaluation"
    split: Optional[str] = None
    num_videos: Optional[int] = None
    num_samples: Optional[int] = None
    seed: Optional[int] = None
    num_inference_steps: Optional[int] = None
    eta: Optional[float] = None
    cond_frames: Optional[int] = None
    pred_frames: Optional[int] = None
    use_occlusion: Optional[bool] = None
    batch_size: int = 16
    i3d: Optional[str] = None
    no_fvd: bool = False
    lpips_weights: Optional[str] = None
    no_lpips: bool = False
    no_baselines: bool = False
    num_gifs: int = 4
    device: Optional[str] = None
    dtype: str = "float32"
    update_model_card: bool = False
    max_videos: Optional[int] = None  # stop after this many newly finished videos (per process): for tests
    _resolved: Optional[Benchmark] = field(default=None, init=False, repr=False, compare=False)

    def registry_benchmark(self) -> Benchmark:
        """The benchmark of the run: ``benchmark`` (a registry name or file) when given, else the one the pipeline
        records; an unknown name, a bad file, a frame size or channels that differ from the pipeline's recorded
        benchmark, or neither being there is an :class:`EvaluationError`."""
        if self._resolved is None:
            try:
                self._resolved = pipeline_benchmark(self.benchmark, self._recorded_benchmark())
            except BenchmarkDefinitionError as e:
                raise EvaluationError(str(e)) from None
        return self._resolved

    def _recorded_benchmark(self) -> Optional[Dict[str, Any]]:
        """The pipeline's recorded benchmark: read from a local folder always, from the Hub only when needed."""
        from ..pipelines import ExtDMPipeline

        local = Path(self.pipeline, "model_index.json").is_file()
        if self.benchmark is not None and not local:
            return None
        try:
            return ExtDMPipeline.load_config(self.pipeline).get("benchmark")
        except Exception as e:  # noqa: BLE001 - a missing folder or repo, a network error: name the argument
            raise EvaluationError(f"--pipeline: cannot read the model_index.json of {self.pipeline!r} ({e}); pass "
                                  "--benchmark or a pipeline folder") from None

    def protocol(self) -> EvaluationProtocol:
        """The registry's protocol with this config's overrides (the fields both name the same)."""
        registry = self.registry_benchmark().evaluation
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(registry)
                     if getattr(self, f.name, None) is not None}
        protocol = dataclasses.replace(registry, **overrides)
        # a Python caller may pass eta=1 or use_occlusion=0: the recorded settings keep one type
        return dataclasses.replace(protocol, eta=float(protocol.eta), use_occlusion=bool(protocol.use_occlusion))

    def protocol_record(self) -> Dict[str, Any]:
        """The resolved protocol as ``metrics.json`` (``metadata.protocol``) and ``run_config.json`` store it."""
        return {"benchmark": self.registry_benchmark().name, **dataclasses.asdict(self.protocol())}

    def run_settings(self) -> Dict[str, Any]:
        """What must match for a resumed run to continue an earlier one (batch size, device, processes do not)."""
        return {
            **self.protocol_record(),
            "pipeline": str(self.pipeline),
            "dataset_dir": str(self.dataset_dir),
            "dtype": self.dtype,
            "fvd": not self.no_fvd,
            "i3d": None if self.no_fvd else (str(self.i3d) if self.i3d else "download"),
            "lpips": not self.no_lpips,
            "lpips_weights": None if self.no_lpips else (str(self.lpips_weights) if self.lpips_weights else "torchvision"),
            "baselines": not self.no_baselines,
            "num_gifs": self.num_gifs,
        }

    def check(self) -> None:
        """Refuse settings no run can use, naming the option."""
        if self.batch_size < 1:
            raise EvaluationError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise EvaluationError(f"--dtype must be float32, float16 or bfloat16, got {self.dtype!r}")


def sample_seed(seed: int, clip: int, sample: int, num_samples: int) -> int:
    """Seed of the CPU generator of sample ``sample`` of evaluation clip ``clip`` (0..num_videos−1)."""
    return seed + clip * num_samples + sample
