import pytest
import torch
from diffusers import DDIMScheduler

from extdm_diffusers import ExtDMDDIMScheduler
from reference_cases import load_case


def test_time_grid_is_the_originals():
    scheduler = ExtDMDDIMScheduler()
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [909, 818, 727, 636, 545, 454, 363, 272, 181, 90]
    # stock DDIM cannot produce that grid with any of its spacings
    for spacing in ("leading", "trailing", "linspace"):
        ddim = DDIMScheduler.from_config(scheduler.config, timestep_spacing=spacing)
        ddim.set_timesteps(10)
        assert ddim.timesteps.tolist() != scheduler.timesteps.tolist()


def test_schedule_equals_the_original_buffers():
    _, tensors, _ = load_case("pipeline_traj_ada")
    scheduler = ExtDMDDIMScheduler()
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):
        torch.testing.assert_close(getattr(scheduler, name), tensors[f"buffers.diffusion.{name}"], rtol=0, atol=0)


def test_step_follows_the_original_update():
    scheduler = ExtDMDDIMScheduler()
    scheduler.set_timesteps(10)
    sample, eps = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    out = scheduler.step(eps, 909, sample, eta=0.0)
    a_t = scheduler.alphas_cumprod[909]
    x0 = (sample - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    s = torch.quantile(x0.reshape(2, -1).abs(), 0.9, dim=1).clamp(min=1).view(2, 1, 1, 1, 1)
    x0 = x0.clamp(-s, s) / s
    a_next = scheduler.alphas_cumprod_prev[818]
    expected = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.prev_sample, expected, rtol=1e-5, atol=1e-6)
    # the last step lands on the thresholded x0 itself (alphas_cumprod_prev[0] = 1)
    last = scheduler.step(eps, 90, sample, eta=1.0)
    torch.testing.assert_close(last.prev_sample, last.pred_original_sample)


def test_eta_noise_uses_the_generator():
    scheduler = ExtDMDDIMScheduler()
    scheduler.set_timesteps(10)
    sample, eps = torch.randn(1, 3, 2, 4, 4), torch.randn(1, 3, 2, 4, 4)
    a = scheduler.step(eps, 909, sample, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    b = scheduler.step(eps, 909, sample, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    c = scheduler.step(eps, 909, sample, eta=1.0, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_add_noise_is_q_sample():
    scheduler = ExtDMDDIMScheduler()
    x0, noise, t = torch.randn(3, 3, 2, 4, 4), torch.randn(3, 3, 2, 4, 4), torch.tensor([0, 500, 999])
    noisy = scheduler.add_noise(x0, noise, t)
    ac = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, ac.sqrt() * x0 + (1 - ac).sqrt() * noise)


def test_errors():
    with pytest.raises(ValueError, match="original cosine schedule only"):
        ExtDMDDIMScheduler(beta_schedule="linear")
    scheduler = ExtDMDDIMScheduler()
    with pytest.raises(ValueError, match="call `set_timesteps` before `step`"):
        scheduler.step(torch.zeros(1), 909, torch.zeros(1))
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 5 is not one of this scheduler's timesteps"):
        scheduler.step(torch.zeros(1), 5, torch.zeros(1))


def _assert_steps_as_epsilon(scheduler: ExtDMDDIMScheduler, perfect_output) -> None:
    """``scheduler``'s DDIM step on a perfect model output (``perfect_output(x0, noise, t)``) is the ε-scheduler's
    step on the true noise (x0 inside [-1, 1]: the dynamic threshold leaves it alone)."""
    eps_scheduler = ExtDMDDIMScheduler()
    x0, noise = torch.rand(4, 3, 2, 8, 8) * 1.8 - 0.9, torch.randn(4, 3, 2, 8, 8)
    for each in (eps_scheduler, scheduler):
        each.set_timesteps(10)
    step = torch.full((4,), 818)
    noisy = scheduler.add_noise(x0, noise, step)
    expected = eps_scheduler.step(noise, 818, noisy, eta=1.0, generator=torch.Generator().manual_seed(0))
    got = scheduler.step(perfect_output(x0, noise, step), 818, noisy, eta=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got.pred_original_sample, expected.pred_original_sample, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=0, atol=1e-5)
    # an ε-scheduler passes the model output through unchanged
    assert eps_scheduler.predict_noise(noise, 818, noisy) is noise


def test_v_prediction_recovers_x0_and_noise_and_steps_as_epsilon():
    # v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0: the scheduler maps a perfect v back to x0 and ε
    v_scheduler = ExtDMDDIMScheduler(prediction_type="v_prediction")
    x0, noise = torch.rand(4, 3, 2, 8, 8) * 1.8 - 0.9, torch.randn(4, 3, 2, 8, 8)
    t = torch.tensor([3, 300, 700, 999])
    noisy = v_scheduler.add_noise(x0, noise, t)
    velocity = v_scheduler.get_velocity(x0, noise, t)
    ac = v_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(velocity, ac.sqrt() * noise - (1 - ac).sqrt() * x0)
    torch.testing.assert_close(v_scheduler.predict_original_sample(velocity, t, noisy), x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(v_scheduler.predict_noise(velocity, t, noisy), noise, rtol=0, atol=1e-5)
    _assert_steps_as_epsilon(v_scheduler, v_scheduler.get_velocity)


def test_sample_prediction_takes_x0_as_given_and_steps_as_epsilon():
    # "sample": the model output is x0; the noise follows from x_t = sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε
    x0_scheduler = ExtDMDDIMScheduler(prediction_type="sample")
    x0, noise = torch.rand(4, 3, 2, 8, 8) * 1.8 - 0.9, torch.randn(4, 3, 2, 8, 8)
    t = torch.tensor([3, 300, 700, 999])
    noisy = x0_scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(x0_scheduler.predict_original_sample(x0, t, noisy), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0_scheduler.predict_noise(x0, t, noisy), noise, rtol=0, atol=1e-4)
    _assert_steps_as_epsilon(x0_scheduler, lambda x0, noise, t: x0)
    assert DDIMScheduler.from_config(x0_scheduler.config).config.prediction_type == "sample"


def test_v_prediction_survives_stock_schedulers_and_reload(tmp_path):
    scheduler = ExtDMDDIMScheduler(prediction_type="v_prediction")
    scheduler.save_pretrained(tmp_path)
    assert ExtDMDDIMScheduler.from_pretrained(tmp_path).config.prediction_type == "v_prediction"
    assert DDIMScheduler.from_config(scheduler.config).config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        ExtDMDDIMScheduler(prediction_type="x0")


def test_stock_schedulers_take_every_extdm_field():
    """Every field of a freshly built scheduler is ExtDM's: another scheduler's from_config takes them all, none
    replaced by its own defaults (diffusers' `_use_default_values`)."""
    scheduler = ExtDMDDIMScheduler()
    assert "_use_default_values" not in scheduler.config
    ddim = DDIMScheduler.from_config(scheduler.config)
    assert (ddim.config.beta_schedule, ddim.config.thresholding, ddim.config.clip_sample) == ("squaredcos_cap_v2", True, False)
    assert ddim.config.sample_max_value == scheduler.config.sample_max_value


def test_stepping_through_the_grid_by_tensor_or_number_agrees():
    """The pipeline passes the grid's tensors; by value (numbers) gives the same chain, and the scheduler keeps
    its tables where the samples are."""
    chains = []
    for as_number in (False, True):
        scheduler = ExtDMDDIMScheduler()
        scheduler.set_timesteps(10, device="cpu")
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(2, 3, 2, 4, 4, generator=generator)
        for t in scheduler.timesteps:
            eps = torch.randn(sample.shape, generator=generator)
            sample = scheduler.step(eps, int(t) if as_number else t, sample, eta=1.0, generator=generator).prev_sample
        assert scheduler.step_index == len(scheduler.timesteps)
        chains.append(sample)
    assert torch.equal(chains[0], chains[1])
