"""Importing diffusers folders as experts: tiny random UNet2DModel / DiTTransformer2DModel /
PixArtTransformer2DModel saved by diffusers' save_pretrained. The imported expert's velocity is
our conversion (design.md section 2, recomputed here in numpy) of the diffusers module's own
output, in float64; sampling it converges to diffusers' DDIM output; bad folders are one-line
errors naming the file and the field."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from diffusers_models import save_folder, tiny_dit, tiny_pixart, tiny_unet
from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.experts.build import load_velocity_model
from hetdiff.experts.diffusers_import import (
    import_diffusers_expert,
    locate_diffusers_folder,
    spec_from_diffusers,
)
from hetdiff.sampling.solvers import seeded_noise, solve

TRAINED_BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD's scaled_linear, as a list


def reference_table(config: dict) -> np.ndarray:
    """abar_s (float64) of a DDPM scheduler config, computed here from the formulas."""
    T = config["num_train_timesteps"]
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    elif config["beta_schedule"] == "linear":
        betas = np.linspace(config["beta_start"], config["beta_end"], T)
    elif config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, T) ** 2
    else:  # squaredcos_cap_v2
        f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1 - betas)


def reference_velocity(call, config: dict, x: torch.Tensor, t: torch.Tensor, channels: int):
    """v(x_t, t) from the module's own output: flow nets read t * T; DDPM nets read x_t /
    sqrt((1-t)^2 + t^2) at the fractional step of equal log-SNR, then (x0, eps) -> eps - x0."""
    T = config["num_train_timesteps"]
    if config["_class_name"] == "FlowMatchEulerDiscreteScheduler":
        return call(x, t * T)
    lam_table = np.log(reference_table(config)) - np.log1p(-reference_table(config))
    lam = 2 * (np.log1p(-t.numpy()) - np.log(t.numpy()))
    step = torch.from_numpy(np.interp(-lam, -lam_table, np.arange(T, dtype=np.float64)))
    scale = torch.sqrt((1 - t) ** 2 + t**2)[:, None, None, None]
    alpha, sigma = (1 - t)[:, None, None, None] / scale, t[:, None, None, None] / scale
    x_s = x / scale
    out = call(x_s, step)[:, :channels]
    kind = config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        x0, eps = (x_s - sigma * out) / alpha, out
    elif kind == "sample":
        x0, eps = out, (x_s - alpha * out) / sigma
    else:
        x0, eps = alpha * x_s - sigma * out, sigma * x_s + alpha * out
    return eps - x0


CASES = {
    "unet-eps-linear": (lambda: tiny_unet(0), lambda: DDPMScheduler(), None),
    "unet-v-trained_betas": (
        lambda: tiny_unet(1),
        lambda: DDPMScheduler(trained_betas=TRAINED_BETAS.tolist(), prediction_type="v_prediction"),
        None,
    ),
    "unet-x0-cosine-classes": (
        lambda: tiny_unet(2, num_class_embeds=3),
        lambda: DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
        "labels",
    ),
    "dit-eps-learned-range": (
        lambda: tiny_dit(3),
        lambda: DDPMScheduler(variance_type="learned_range"),
        "labels",
    ),
    "pixart-text-v-scaled_linear": (
        lambda: tiny_pixart(4, caption_channels=6),
        lambda: EulerDiscreteScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
        ),
        "text",
    ),  # fmt: skip
    "pixart-flow-shift3": (
        lambda: tiny_pixart(5),
        lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
        None,
    ),
}


def own_call(module, kind, cond):
    """The diffusers module called the way its own pipelines call it (float64)."""
    name = type(module).__name__
    if name == "UNet2DModel":
        labels = None if cond is None else cond.class_labels
        return lambda x, s: module(x, s, class_labels=labels).sample
    if name == "DiTTransformer2DModel":  # null class -1 is diffusers' last row
        labels = torch.where(cond.class_labels < 0, 10, cond.class_labels)
        return lambda x, s: module(x, timestep=s, class_labels=labels).sample
    extra = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    if cond is not None:
        extra |= {"encoder_hidden_states": cond.context,
                  "encoder_attention_mask": cond.context_mask.double()}  # fmt: skip
    return lambda x, s: module(x, timestep=s, **extra).sample


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_velocity_is_the_conversion_of_the_module_output(case, tmp_path):
    make_model, make_scheduler, kind = CASES[case]
    model, scheduler = make_model(), make_scheduler()
    folder = save_folder(model, scheduler, tmp_path / "model")
    path, spec = import_diffusers_expert(folder, tmp_path / "expert", cluster_id=0)
    velocity, spec = load_velocity_model(path)
    velocity = velocity.double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    lo, hi = velocity.t_range
    t = torch.linspace(lo + 1e-3, hi - 1e-3, 4, dtype=torch.float64)
    cond = None
    if kind == "labels":
        cond = Conditioning(class_labels=torch.tensor([0, 2, 1, -1 if "dit" in case else 0]))
    elif kind == "text":
        mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
        cond = Conditioning(context=torch.randn(4, 3, 6, generator=gen, dtype=torch.float64),
                            context_mask=mask)  # fmt: skip
    ours = velocity(x, t, cond)
    module = model.double()
    with torch.no_grad():
        expected = reference_velocity(own_call(module, kind, cond), dict(scheduler.config), x, t, 1)
    assert expected.abs().max() > 0.1, "the model must not be trivial"
    err = (ours - expected).abs().max().item()
    print(f"{case}: objective {spec.objective}/{spec.prediction}, max |v - ref| = {err:.2e}")
    assert err < 1e-10
    assert spec.model["arch"] == "diffusers" and spec.model["class"] == type(model).__name__
    assert spec.learned_variance == ("learned" in case)


def ddim_loop(model, scheduler, noise, steps, labels=None):
    """DDIMPipeline's own loop (eta = 0) on raw tensors, without its final clamp to [0, 1];
    learned-variance outputs split as diffusers' DiT pipeline does."""
    scheduler.set_timesteps(steps)
    x = noise
    kwargs = {} if labels is None else {"class_labels": labels}
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(x, t.expand(x.shape[0]), **kwargs).sample[:, : x.shape[1]]
            x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


# Random networks that predict eps make x0 = (x - sigma eps) / alpha explode near t_max (alpha
# down to 1e-4), a stiff start no sampler resolves; x0- and v-predicting ones stay bounded.
CONVERGENCE = {
    "unet-x0-linear": (lambda: tiny_unet(0), {"prediction_type": "sample"}, None),
    "unet-v-trained_betas": (
        lambda: tiny_unet(1),
        {"trained_betas": TRAINED_BETAS.tolist(), "prediction_type": "v_prediction"},
        None,
    ),
    "dit-v-learned-cosine": (
        lambda: tiny_dit(3),
        {
            "beta_schedule": "squaredcos_cap_v2",
            "variance_type": "learned_range",
            "prediction_type": "v_prediction",
        },
        torch.tensor([1, 7]),
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(CONVERGENCE))
def test_sampling_converges_to_diffusers_ddim(case, tmp_path):
    """DDIM (eta = 0) and the converted velocity integrate one ODE: our Euler samples approach
    diffusers' 1000-step DDIM output from the same noise as steps grow (DDIMPipeline's images
    are that output, clamped to [0, 1])."""
    make_model, fields, labels = CONVERGENCE[case]
    model = make_model()
    folder = save_folder(model, DDPMScheduler(**fields), tmp_path / "model")
    scheduler = DDIMScheduler.from_pretrained(
        str(folder / "scheduler"), clip_sample=False, timestep_spacing="trailing"
    )
    path, _ = import_diffusers_expert(folder, tmp_path / "expert")
    velocity, _ = load_velocity_model(path)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = ddim_loop(model, scheduler, noise, 1000, labels)
    if labels is None:
        pipe = DDIMPipeline(unet=model, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), eta=0.0,
                      num_inference_steps=50, output_type="np").images  # fmt: skip
        clamped = (ddim_loop(model, scheduler, noise, 50) / 2 + 0.5).clamp(0, 1)
        assert np.abs(images - clamped.permute(0, 2, 3, 1).numpy()).max() < 1e-6
    errors = []
    for steps in (5, 20, 80):
        ours = solve(velocity, noise, steps, velocity.t_range, "euler", cond=labels)
        errors.append(float((ours - reference).abs().max() / reference.abs().max()))
        print(f"{case}: Euler {steps:2d} steps vs diffusers DDIM 1000 steps: rel. max err "
              f"{errors[-1]:.2e}")  # fmt: skip
    assert errors[0] > errors[1] > errors[2] and errors[2] < min(0.03, errors[0] / 3)


def test_seeded_noise_drives_both_samplers(tmp_path):
    """The same noise row through hetdiff's seeded_noise and diffusers' generator: a sanity link
    the pipeline comparison above relies on (seed -> identical start)."""
    a = seeded_noise([0], (1, 8, 8))
    b = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(a[0], b.float())


# ----------------------------------------------------------------------------- bad input
def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_bad_folders_are_one_line_errors_naming_file_and_field(tmp_path):
    folder = save_folder(tiny_unet(0), DDPMScheduler(), tmp_path / "m")
    sched_file = folder / "scheduler" / "scheduler_config.json"
    good = json.loads(sched_file.read_text())

    def fails(match):
        with pytest.raises(HetdiffError) as err:
            spec_from_diffusers(locate_diffusers_folder(folder))
        message = str(err.value)
        assert "\n" not in message and match in message, message
        return message

    sched_file.unlink()
    assert "no scheduler config" in fails("scheduler/scheduler_config.json")
    write(sched_file, {**good, "_class_name": "KarrasVeScheduler"})
    assert "scheduler_config.json: _class_name 'KarrasVeScheduler'" in fails("_class_name")
    write(sched_file, {**good, "prediction_type": "flow_prediction"})
    assert "scheduler_config.json: prediction_type 'flow_prediction'" in fails("cannot be")
    write(sched_file, {**good, "trained_betas": [0.01] * 10})
    assert "scheduler_config.json: trained_betas has 10 entries" in fails("num_train_timesteps")
    write(sched_file, {**good, "beta_schedule": "laplace"})
    assert "beta_schedule 'laplace'" in fails("scheduler_config.json")
    write(sched_file, {**good, "variance_type": "learned_range"})
    assert "config.json has out_channels 1" in fails("variance_type 'learned_range'")
    write(sched_file, good)
    config = json.loads((folder / "config.json").read_text())
    write(folder / "config.json", {**config, "_class_name": "UNet2DConditionModel"})
    assert "config.json: _class_name 'UNet2DConditionModel'" in fails("not supported")
    write(folder / "config.json", {**config, "sample_size": [8, 16]})
    assert "config.json: sample_size [8, 16]" in fails("not square")
    write(folder / "config.json", config)
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(HetdiffError, match="only a pickled .bin: hetdiff never unpickles"):
        locate_diffusers_folder(folder)


def test_a_model_of_another_size_does_not_join_the_ensemble(tmp_path):
    ours = save_folder(tiny_unet(0), DDPMScheduler(), tmp_path / "a")
    import_diffusers_expert(ours, tmp_path / "experts" / "expert-0", cluster_id=0)
    big = tiny_unet(1)
    big.register_to_config(sample_size=16)
    other = save_folder(big, DDPMScheduler(), tmp_path / "b")
    with pytest.raises(HetdiffError) as err:
        import_diffusers_expert(other, tmp_path / "experts" / "expert-1", cluster_id=1,
                                experts=tmp_path / "experts")  # fmt: skip
    assert str(err.value) == (
        f"{other / 'config.json'}: sample_size 16 disagrees with the ensemble's resolution 8; "
        "import a model of the ensemble's data"
    )
