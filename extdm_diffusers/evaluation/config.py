"""What an evaluation run is asked to do: its settings, the protocol they resolve to, and the seed of every sample."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..benchmarks import Benchmark, BenchmarkDefinitionError, EvaluationProtocol, pipeline_benchmark
from ..schedulers.sampler_presets import PAPER_SCHEDULER, Sampler, resolve_sampler

METHODS = ("extdm", "copy_last_frame", "autoencoder")
#: metric -> whether larger is better (the best-of-n pick: max for PSNR/SSIM, min for LPIPS, as the original)
FRAME_METRICS = {"psnr": True, "ssim": True, "lpips": False}
DTYPES = ("float32", "float16", "bfloat16")
AUTOCAST_DTYPES = ("float16", "bfloat16")


class EvaluationError(RuntimeError):
    """A problem with the run's inputs or settings, reported by the CLI as one line (no traceback)."""


@dataclass
class EvaluationConfig:
    """Everything an evaluation run needs. ``None`` takes the benchmark's protocol value; ``benchmark`` (a registry
    name or a benchmark file) defaults to the one the pipeline records. The sampler is ``scheduler`` (a
    ``schedulers.SCHEDULER_NAMES`` name, default the paper's ``ddim_original``), ``num_inference_steps`` and
    ``eta``, or ``sampler_preset`` (a ``schedulers.SAMPLER_PRESETS`` name) instead of those three."""

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
    scheduler: Optional[str] = None
    sampler_preset: Optional[str] = None
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
    autocast: Optional[str] = None  # run the pipeline under torch.autocast in this dtype (weights as `dtype`)
    update_model_card: bool = False
    max_videos: Optional[int] = None  # stop after this many newly finished videos (per process): for tests
    _resolved: Optional[Benchmark] = field(default=None, init=False, repr=False, compare=False)
    _estimates_occlusion: Optional[bool] = field(default=None, init=False, repr=False, compare=False)

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

    def _autoencoder_estimates_occlusion(self) -> bool:
        """Whether the pipeline's autoencoder estimates occlusion maps (its saved config; True where unreadable, so
        that the protocol's setting stands and the pipeline names a mismatch)."""
        from ..models import FlowAutoencoder

        if self._estimates_occlusion is None:
            try:
                saved = FlowAutoencoder.load_config(self.pipeline, subfolder="flow_autoencoder")
                self._estimates_occlusion = FlowAutoencoder.config_estimates_occlusion(saved.get("generator_params"))
            except Exception:  # noqa: BLE001 - no local folder or Hub access: the protocol decides
                self._estimates_occlusion = True
        return self._estimates_occlusion

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

    def sampler(self) -> Sampler:
        """The sampler of the run: the flags, or the preset, over the protocol's steps and eta."""
        registry = self.registry_benchmark().evaluation
        try:
            return resolve_sampler(self.scheduler, self.num_inference_steps, self.eta, self.sampler_preset,
                                   protocol_steps=registry.num_inference_steps, protocol_eta=registry.eta)
        except ValueError as e:
            raise EvaluationError(str(e)) from None

    def protocol(self) -> EvaluationProtocol:
        """The registry's protocol with this config's overrides (the fields both name the same; the steps from
        the sampler, so from a preset too). ``eta`` stays the protocol's where the scheduler takes none."""
        registry = self.registry_benchmark().evaluation
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(registry)
                     if getattr(self, f.name, None) is not None}
        sampler = self.sampler()
        overrides["num_inference_steps"] = sampler.num_inference_steps
        if sampler.eta is not None:
            overrides["eta"] = sampler.eta
        if self.use_occlusion is None and registry.use_occlusion:
            overrides["use_occlusion"] = registry.decodes_with_occlusion(self._autoencoder_estimates_occlusion())
        protocol = dataclasses.replace(registry, **overrides)
        # a Python caller may pass eta=1 or use_occlusion=0: the recorded settings keep one type
        return dataclasses.replace(protocol, eta=float(protocol.eta), use_occlusion=bool(protocol.use_occlusion))

    def protocol_record(self) -> Dict[str, Any]:
        """The resolved protocol as ``metrics.json`` (``metadata.protocol``) and ``run_config.json`` store it, with
        the sampler: its name, solver settings, preset and whether it is the paper's."""
        registry = self.registry_benchmark().evaluation
        sampler = self.sampler()
        return {"benchmark": self.registry_benchmark().name, **dataclasses.asdict(self.protocol()),
                "scheduler": sampler.scheduler, "scheduler_settings": sampler.settings(),
                "sampler_preset": sampler.preset,
                "paper_sampler": sampler.is_paper(registry.num_inference_steps, registry.eta)}

    def sampler_note(self) -> str:
        """One line on the sampler: the paper's, or a sampler whose numbers are not the paper's protocol."""
        registry = self.registry_benchmark().evaluation
        sampler = self.sampler()
        if sampler.is_paper(registry.num_inference_steps, registry.eta):
            return f"the paper's sampler: {sampler.describe()}"
        return (f"not the paper's sampler: {sampler.describe()} (the paper: {PAPER_SCHEDULER}, "
                f"{registry.num_inference_steps} steps per window, eta {registry.eta:g}); these numbers are not the "
                "paper's protocol")

    def denoiser_calls_per_video(self, window_frames: int) -> int:
        """U-Net calls for one sample of one video over the horizon, predicted ``window_frames`` (the U-Net's
        ``num_pred_frames``) at a time, from the pipeline's scheduler config."""
        from ..schedulers import ExtDMDDIMScheduler, denoiser_calls_per_video

        try:
            scheduler_config = ExtDMDDIMScheduler.load_config(self.pipeline, subfolder="scheduler")
        except Exception as e:  # noqa: BLE001 - a missing folder or repo, a network error: name the argument
            raise EvaluationError(f"--pipeline: cannot read the scheduler config of {self.pipeline!r} ({e})") from None
        protocol = self.protocol()
        return denoiser_calls_per_video(self.sampler().scheduler, scheduler_config, protocol.num_inference_steps,
                                        protocol.pred_frames, window_frames)

    def run_settings(self) -> Dict[str, Any]:
        """What must match for a resumed run to continue an earlier one (batch size, device, processes do not)."""
        return {
            **self.protocol_record(),
            "pipeline": str(self.pipeline),
            "dataset_dir": str(self.dataset_dir),
            "dtype": self.dtype,
            "autocast": self.autocast,
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
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise EvaluationError(f"--autocast must be float16 or bfloat16, got {self.autocast!r}")
        self.sampler()


def sample_seed(seed: int, clip: int, sample: int, num_samples: int) -> int:
    """Seed of the CPU generator of sample ``sample`` of evaluation clip ``clip`` (0..num_videos−1)."""
    return seed + clip * num_samples + sample
