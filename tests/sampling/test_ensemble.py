"""The ensemble velocity: closed-form exactness, grouped routing, sampling draws, guidance,
and the one-line errors of mismatched experts."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from torch import Tensor, nn

from helpers import rel_err
from hetdiff.conditioning import Conditioning
from hetdiff.errors import HetdiffError
from hetdiff.objectives.gaussian_mixture import GaussianMixture
from hetdiff.objectives.schedules import make_schedule
from hetdiff.objectives.velocity import DDPMVelocity, FlowVelocity, VelocityModel
from hetdiff.sampling.ensemble import STRATEGIES, Ensemble, representable_range
from hetdiff.sampling.guidance import guided
from hetdiff.sampling.solvers import solve

SHAPE = (1, 4, 4)


@pytest.fixture
def gm4() -> GaussianMixture:
    """Four well-separated isotropic components in (1, 4, 4), unequal weights and widths."""
    gen = torch.Generator().manual_seed(3)
    means = 2.0 * torch.randn(4, 16, generator=gen, dtype=torch.float64)
    return GaussianMixture(
        means, torch.tensor([0.3, 0.5, 0.7, 0.4]), torch.tensor([0.1, 0.2, 0.3, 0.4]), SHAPE
    )


def exact_experts(mixture: GaussianMixture) -> list[VelocityModel]:
    """One exact expert per component, four parameterizations on three schedules."""
    kinds = [("linear", "eps"), ("cosine", "x0"), ("scaled_linear", "v"), None]
    experts: list[VelocityModel] = []
    for j, kind in enumerate(kinds):
        part = mixture.component(j)
        if kind is None:
            experts.append(FlowVelocity(part.flow_net()))
        else:
            schedule = make_schedule(kind[0])
            experts.append(DDPMVelocity(part.ddpm_net(schedule, kind[1]), schedule, kind[1]))
    return experts


def bayes_router(mixture: GaussianMixture):
    """The exact router: log p(component | x_t, t) of the mixture."""

    def router(x: Tensor, t: Tensor, cond=None) -> Tensor:
        return torch.log(mixture.flow_responsibilities(x, t))

    return router


def flow_points(mixture: GaussianMixture, t_range, n_t=60, per_t=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(*t_range, n_t, dtype=torch.float64).repeat_interleave(per_t)
    x0, _ = mixture.sample(t.shape[0], gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    tb = t.reshape(-1, 1, 1, 1)
    return (1 - tb) * x0 + tb * eps, t


# --------------------------------------------------------------------------- closed form


def test_full_ensemble_of_exact_experts_is_the_exact_global_velocity(gm4):
    ensemble = Ensemble(exact_experts(gm4), range(4), bayes_router(gm4), 4, strategy="full")
    ranges = [make_schedule(name).t_range for name in ("linear", "cosine", "scaled_linear")]
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    assert ensemble.t_range == (lo, hi) and 0.02 < lo < hi < 0.95  # scaled_linear / cosine ends
    x_t, t = flow_points(gm4, ensemble.t_range)
    got, exact = ensemble(x_t, t), gm4.velocity(x_t, t)
    per_row = (got - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
    assert per_row.max() <= 1e-8, float(per_row.max())
    # the router really mixes: somewhere no single expert carries the answer
    weights = ensemble.weights(x_t, t)
    assert weights.max(dim=1).values.min() < 0.9
    assert torch.allclose(weights.sum(1), torch.ones_like(t), atol=1e-12)


def test_full_ensemble_samples_like_the_exact_velocity(gm4):
    ensemble = Ensemble(exact_experts(gm4), range(4), bayes_router(gm4), 4)
    noise = torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = solve(ensemble, noise, 20, t_range=ensemble.t_range, solver="heun")
    exact = solve(FlowVelocity(gm4.flow_net()), noise, 20, t_range=ensemble.t_range, solver="heun")
    assert rel_err(ours, exact) <= 1e-8


def test_missing_expert_renormalizes_to_the_mixture_of_the_rest(gm4):
    experts = exact_experts(gm4)
    with pytest.raises(HetdiffError, match=r"no expert for cluster\(s\) \[2\]"):
        Ensemble(experts[:2] + experts[3:], [0, 1, 3], bayes_router(gm4), 4)
    with pytest.warns(UserWarning, match=r"renormalizing the router over clusters \[0, 1, 3\]"):
        ensemble = Ensemble(
            experts[:2] + experts[3:], [0, 1, 3], bayes_router(gm4), 4, allow_missing=True
        )
    assert ensemble.missing_clusters == [2]
    keep = [0, 1, 3]
    rest = GaussianMixture(gm4.means[keep], gm4.stds[keep], gm4.weights[keep], SHAPE)
    x_t, t = flow_points(gm4, ensemble.t_range, n_t=30)
    assert rel_err(ensemble(x_t, t), rest.velocity(x_t, t)) <= 1e-8
    assert torch.allclose(ensemble.weights(x_t, t), rest.flow_responsibilities(x_t, t), atol=1e-12)


def test_t_outside_the_common_range_is_refused(gm4):
    ensemble = Ensemble(exact_experts(gm4), range(4), bayes_router(gm4), 4)
    x = torch.zeros(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(HetdiffError, match="outside the valid range") as err:
        ensemble(x, torch.tensor([0.5, 0.999], dtype=torch.float64))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- grouped routing


class Counting(VelocityModel):
    """A velocity model that counts its calls and rows, around an inner one."""

    def __init__(self, inner: VelocityModel):
        super().__init__()
        self.inner, self.t_range = inner, inner.t_range
        self.calls, self.rows = 0, 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x, t, cond)


def random_router(seed: int = 0, k: int = 4):
    """A fixed smooth router whose choice varies from row to row."""
    proj = torch.randn(16, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def router(x, t, cond=None):
        return x.reshape(x.shape[0], -1).to(torch.float64) @ proj + t[:, None]

    return router


def per_sample_reference(experts, router, x, t, k):
    """The strategy applied one row at a time with no grouping."""
    rows = []
    for i in range(x.shape[0]):
        w = torch.softmax(router(x[i : i + 1], t[i : i + 1]), dim=1)[0]
        top, idx = w.topk(k)
        top = top / top.sum()
        rows.append(sum(top[s] * experts[idx[s]](x[i : i + 1], t[i : i + 1])[0] for s in range(k)))
    return torch.stack(rows)


@pytest.mark.parametrize("strategy,k", [("top1", 1), ("top-k", 2), ("top-k", 3)])
def test_grouped_topk_equals_a_per_sample_loop_and_runs_each_expert_once(gm4, strategy, k):
    experts = [Counting(e) for e in exact_experts(gm4)]
    router = random_router()
    ensemble = Ensemble(experts, range(4), router, 4, strategy=strategy, top_k=k)
    x_t, t = flow_points(gm4, ensemble.t_range, n_t=16, per_t=4)
    got = ensemble(x_t, t)
    choice = ensemble.weights(x_t, t).topk(k, dim=1).indices
    assert len(set(choice[:, 0].tolist())) == 4  # every expert is somebody's first choice
    assert [e.calls for e in experts] == [1, 1, 1, 1]
    assert sum(e.rows for e in experts) == k * x_t.shape[0]  # each expert sees only its rows
    reference = per_sample_reference([e.inner for e in experts], router, x_t, t, k)
    assert rel_err(got, reference) <= 1e-12


def test_top_k_with_all_experts_equals_full(gm4):
    experts, router = exact_experts(gm4), random_router(1)
    x_t, t = flow_points(gm4, (0.05, 0.9), n_t=10)
    full = Ensemble(experts, range(4), router, 4, strategy="full")(x_t, t)
    top4 = Ensemble(experts, range(4), router, 4, strategy="top-k", top_k=4)(x_t, t)
    assert rel_err(top4, full) <= 1e-12


def test_router_weights_sum_to_one_and_are_recorded(gm4):
    ensemble = Ensemble(exact_experts(gm4), range(4), random_router(2), 4, "top1", record=True)
    x_t, t = flow_points(gm4, (0.1, 0.9), n_t=8, per_t=2)
    ensemble(x_t, t)
    ensemble(x_t, t)
    assert len(ensemble.recorded) == 2
    t_rec, w_rec = ensemble.recorded[0]
    assert torch.equal(t_rec, t) and w_rec.shape == (16, 4)
    assert (w_rec >= 0).all() and torch.allclose(w_rec.sum(1), torch.ones(16, dtype=w_rec.dtype))


# --------------------------------------------------------------------------- sample strategy


class Constant(VelocityModel):
    """v = value everywhere: reveals which expert produced a row."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, t, cond=None):
        return torch.full_like(x, self.value)


def test_sample_draws_experts_in_proportion_to_the_weights():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)

    def router(x, t, cond=None):
        return torch.log(probs).expand(x.shape[0], 4)

    def ensemble(seed):
        experts = [Constant(float(j)) for j in range(4)]
        gen = torch.Generator().manual_seed(seed)
        return Ensemble(experts, range(4), router, 4, strategy="sample", generator=gen)

    x = torch.zeros(500, *SHAPE, dtype=torch.float64)
    sampler = ensemble(0)
    # a fresh draw at every evaluation: 20 evaluations x 500 rows
    draws = torch.cat([sampler(x, 0.5)[:, 0, 0, 0].long() for _ in range(20)])
    counts = torch.bincount(draws, minlength=4).double()
    assert chisquare(counts.numpy(), (probs * draws.numel()).numpy()).pvalue > 1e-3
    uniform = torch.full((4,), draws.numel() / 4.0, dtype=torch.float64)
    assert chisquare(counts.numpy(), uniform.numpy()).pvalue < 1e-6  # the test has power
    again = ensemble(0)
    assert torch.equal(
        torch.cat([again(x, 0.5)[:, 0, 0, 0].long() for _ in range(20)]), draws
    )  # the seed fixes the draws
    assert not torch.equal(ensemble(1)(x, 0.5)[:, 0, 0, 0].long(), draws[:500])


# --------------------------------------------------------------------------- guidance


class LabelShift(nn.Module):
    """A conditional velocity: v = x * t + (label + 1), with -1 (null) giving 0."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        labels = cond.class_labels.to(x.dtype) + 1
        return x * t.reshape(-1, 1, 1, 1) + labels.reshape(-1, 1, 1, 1)


def test_guidance_is_the_affine_combination_in_one_batched_pass():
    fn = LabelShift()
    x = torch.randn(6, *SHAPE, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    cond = Conditioning(class_labels=torch.tensor([0, 1, 2, 3, 4, -1]))
    v_cond, v_null = fn(x, t, cond), fn(x, t, cond.null())
    fn.calls = 0
    for w in (0.0, 2.5, 7.0):
        got = guided(fn, w)(x, t, cond)
        assert rel_err(got, v_null + w * (v_cond - v_null)) <= 1e-14
    assert fn.calls == 3
    assert torch.equal(guided(fn, 1.0)(x, t, cond), v_cond)  # w = 1: exactly conditional
    assert torch.equal(
        guided(fn, 3.0)(x, 0.5, cond),
        guided(fn, 3.0)(x, torch.full((6,), 0.5, dtype=torch.float64), cond),
    )
    with pytest.raises(HetdiffError, match="finite"):
        guided(fn, float("nan"))


def test_guided_ensemble_forwards_its_t_range(gm4):
    ensemble = Ensemble(exact_experts(gm4), range(4), bayes_router(gm4), 4)
    assert guided(ensemble, 2.0).t_range == ensemble.t_range


# --------------------------------------------------------------------------- bad input


def test_bad_strategies_and_k_are_one_line_errors(gm4):
    experts, router = exact_experts(gm4), bayes_router(gm4)
    cases = [
        (dict(strategy="best"), "unknown ensemble strategy 'best'"),
        (dict(strategy="top-k", top_k=5), "top-k needs 1 <= k <= 4"),
        (dict(strategy="top-k", top_k=0), "top-k needs 1 <= k <= 4"),
        (dict(strategy="nucleus", top_p=0.0), r"nucleus needs top_p in \(0, 1\], got top_p=0.0"),
        (dict(strategy="nucleus", top_p=1.5), r"nucleus needs top_p in \(0, 1\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(HetdiffError, match=message) as err:
            Ensemble(experts, range(4), router, 4, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(HetdiffError, match="cluster 1 has more than one expert"):
        Ensemble(experts, [0, 1, 1, 2], router, 4)
    with pytest.raises(HetdiffError, match="cluster id 4 is outside"):
        Ensemble(experts, [0, 1, 2, 4], router, 4)
    assert set(STRATEGIES) == {"full", "top-k", "top1", "sample", "nucleus"}


# --------------------------------------------------------------------------- checkpoints


def write_expert(directory, name, cluster, *, k=2, res=8, channels=1, classes=0, partition="p1",
                 schedule=None, seed=0, text_encoder=None, autoencoder=None):  # fmt: skip
    """A tiny random DiT expert checkpoint (flow, or DDPM-eps on ``schedule``); a text expert
    (32-d tokens) with ``text_encoder``, a latent one with an ``autoencoder`` dict."""
    from hetdiff.experts.spec import ExpertSpec
    from hetdiff.experts.store import save_expert
    from hetdiff.models.dit import DiT, DiTConfig

    torch.manual_seed(seed)
    config = DiTConfig(input_size=res, in_channels=channels, patch_size=2, hidden_size=32,
                       depth=1, num_heads=2, num_classes=classes,
                       context_dim=None if text_encoder is None else 32)  # fmt: skip
    net = DiT(config)
    for p in net.parameters():  # zero-initialized output layers would make every expert 0
        p.data.normal_(0, 0.1)
    spec = ExpertSpec(
        objective="ddpm" if schedule else "flow",
        prediction="eps" if schedule else "velocity",
        schedule={"name": schedule} if schedule else None,
        model={"arch": "dit", **config.to_dict()},
        cluster_id=cluster,
        num_clusters=k,
        partition_fingerprint=partition,
        resolution=res,
        channels=channels,
        num_classes=classes,
        text_encoder=text_encoder,
        autoencoder=autoencoder,
    )
    save_expert(directory / f"{name}.safetensors", net.state_dict(), spec)


def write_router(path, *, k=2, res=8, channels=1, classes=0, partition="p1", text_encoder=None,
                 context_dim=32):  # fmt: skip
    from hetdiff.experts.router_store import RouterSpec, save_router
    from hetdiff.models.router import Router, RouterConfig

    context = None if text_encoder is None else context_dim
    config = RouterConfig(k, res, channels, num_classes=classes, context_dim=context)
    router = Router(config)
    for p in router.parameters():
        p.data.normal_(0, 0.3)
    spec = RouterSpec.for_config(config, partition, text_encoder=text_encoder)
    return save_router(path, router.state_dict(), spec)


@pytest.fixture
def registry(tmp_path):
    experts = tmp_path / "experts"
    experts.mkdir()
    write_expert(experts, "a", 0, schedule="cosine", seed=1)
    write_expert(experts, "b", 1, seed=2)
    return experts, write_router(tmp_path / "router.safetensors")


def test_load_ensemble_builds_the_velocity_from_checkpoints(registry):
    from hetdiff.experts.build import load_velocity_model
    from hetdiff.experts.router_store import load_router
    from hetdiff.sampling.ensemble import load_ensemble

    experts_dir, router_path = registry
    ensemble = load_ensemble(experts_dir, router_path, strategy="full")
    assert ensemble.cluster_ids == [0, 1]
    assert ensemble.t_range == make_schedule("cosine").t_range  # the DDPM expert's range
    router = load_router(router_path)[0]
    a = load_velocity_model(experts_dir / "a.safetensors")[0]
    b = load_velocity_model(experts_dir / "b.safetensors")[0]
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.9, 6)
    with torch.no_grad():
        w = torch.softmax(router(x, t), dim=1)
        manual = w[:, :1, None, None] * a(x, t) + w[:, 1:, None, None] * b(x, t)
        got = ensemble(x, t)
    assert got.abs().max() > 0.1 and rel_err(got, manual) <= 1e-5
    top1 = load_ensemble(experts_dir, router_path, strategy="top1")
    with torch.no_grad():
        first = w.argmax(1)
        manual_top1 = torch.where(first[:, None, None, None] == 0, a(x, t), b(x, t))
        assert rel_err(top1(x, t), manual_top1) <= 1e-5
    out = solve(top1, torch.randn(3, 1, 8, 8), 4, t_range=top1.t_range)
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()


def one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(HetdiffError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_load_ensemble_bad_inputs_are_one_line_errors(tmp_path, registry):
    from hetdiff.sampling.ensemble import load_ensemble

    experts_dir, router_path = registry
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error("no expert checkpoints", load_ensemble, empty, router_path)
    one_line_error(
        "unknown ensemble strategy 'fastest'",
        load_ensemble,
        experts_dir,
        router_path,
        strategy="fastest",
    )
    one_line_error(
        "top-k needs 1 <= k <= 2",
        load_ensemble,
        experts_dir,
        router_path,
        strategy="top-k",
        top_k=3,
    )
    other_router = write_router(tmp_path / "other.safetensors", partition="p2")
    message = one_line_error("partition", load_ensemble, experts_dir, other_router)
    assert "p2" in message and "p1" in message
    k3_router = write_router(tmp_path / "k3.safetensors", k=3)
    one_line_error("K=2 partition but the router on K=3", load_ensemble, experts_dir, k3_router)
    big_router = write_router(tmp_path / "big.safetensors", res=16)
    one_line_error("router's resolution is 16", load_ensemble, experts_dir, big_router)
    class_router = write_router(tmp_path / "class.safetensors", classes=3)
    one_line_error("router is class-conditioned", load_ensemble, experts_dir, class_router)

    def variant(name, **kwargs):
        folder = tmp_path / name
        folder.mkdir()
        write_expert(folder, "a", 0)
        write_expert(folder, "b", **{"cluster": 1, **kwargs})
        return folder

    one_line_error(
        "experts differ in resolution", load_ensemble, variant("res", res=16), router_path
    )
    one_line_error(
        "experts differ in channels", load_ensemble, variant("ch", channels=3), router_path
    )
    one_line_error(
        "experts differ in conditioning", load_ensemble, variant("cond", classes=3), router_path
    )
    one_line_error(
        r"cluster 0 has more than one expert \(a.safetensors and b.safetensors\)",
        load_ensemble,
        variant("dup", cluster=0),
        router_path,
    )
    missing = tmp_path / "missing"
    missing.mkdir()
    write_expert(missing, "b", 1)
    one_line_error(r"no expert for cluster\(s\) \[0\]", load_ensemble, missing, router_path)
    with pytest.warns(UserWarning, match=r"no expert for cluster\(s\) \[0\]; renormalizing"):
        ensemble = load_ensemble(missing, router_path, allow_missing=True)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(ensemble.weights(x, torch.full((4,), 0.5)), torch.ones(4, 1))


def test_float32_sampling_stays_inside_every_experts_range(gm4):
    """scaled_linear's t_max rounds *up* in float32; the ensemble clamps at working precision."""
    ensemble = Ensemble(exact_experts(gm4), range(4), bayes_router(gm4), 4)
    hi = ensemble.t_range[1]
    assert float(torch.tensor(hi, dtype=torch.float32)) > hi  # the hazard is real here
    lo32, hi32 = representable_range(ensemble.t_range, torch.float32)
    assert ensemble.t_range[0] <= lo32 < hi32 <= hi and hi - hi32 < 1e-7
    assert float(torch.tensor(hi32, dtype=torch.float32)) == hi32
    noise = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(2))
    out = solve(ensemble, noise, 5, t_range=ensemble.t_range)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_experts_and_router_of_other_encoders_spaces_or_conditionings_are_refused(tmp_path):
    """Each mismatch is one line naming the odd checkpoint and the fix."""
    from hetdiff.sampling.ensemble import load_ensemble

    def folder(name, a=None, b=None):
        path = tmp_path / name
        for k, kwargs in enumerate((a or {}, b or {})):
            (path / f"expert-{k}").mkdir(parents=True)
            write_expert(path / f"expert-{k}", "expert", k, **kwargs)
        return path

    hash_text, other_text = {"text_encoder": "hash"}, {"text_encoder": "/models/clip-text"}
    plain_router = write_router(tmp_path / "plain.safetensors")
    (tmp_path / "router").mkdir()
    text_router = write_router(tmp_path / "router", text_encoder="hash")
    class_router = write_router(tmp_path / "class.safetensors", classes=3)

    message = one_line_error(
        "experts differ in text encoder", load_ensemble,
        folder("encoders", hash_text, other_text), plain_router,
    )  # fmt: skip
    assert "expert-1/expert.safetensors was trained on /models/clip-text" in message
    assert "expert-0/expert.safetensors on hash" in message
    assert message.endswith("--text-encoder hash")

    vae = {"kind": "diffusers-kl", "path": "/models/vae", "digest": "0123456789abcdef",
           "scaling_factor": 0.18, "shift_factor": 0.0}  # fmt: skip
    message = one_line_error(
        "experts differ in latent space", load_ensemble,
        folder("latents", {}, {"autoencoder": vae}), plain_router,
    )  # fmt: skip
    assert "expert-1/expert.safetensors lives in /models/vae@01234567" in message
    assert "in pixels" in message and message.endswith("without --autoencoder")
    message = one_line_error(
        "experts differ in latent space", load_ensemble,
        folder("latents2", {"autoencoder": vae}, {}), plain_router,
    )  # fmt: skip
    assert message.endswith("with --autoencoder /models/vae")

    text_experts = folder("text", hash_text, hash_text)
    class_experts = folder("classes", {"classes": 3}, {"classes": 3})
    message = one_line_error(
        "the router is conditioned on text", load_ensemble, class_experts, text_router
    )
    assert "router/router.safetensors" in message and "classes/" not in message
    assert "expert-0/expert.safetensors" in message and "without --text-encoder" in message
    message = one_line_error(
        "the router is class-conditioned", load_ensemble, text_experts, class_router
    )
    assert "class.safetensors" in message and message.endswith("--text-encoder hash")
    other_router = write_router(
        tmp_path / "other.safetensors", text_encoder="minilm", context_dim=384
    )
    message = one_line_error(
        "captions of text encoder minilm", load_ensemble, text_experts, other_router
    )
    assert "(384-d, other.safetensors)" in message and "on hash (32-d)" in message

    # the fitting combinations load: text router or unconditional router with text experts
    assert load_ensemble(text_experts, text_router).cluster_ids == [0, 1]
    assert load_ensemble(text_experts, plain_router).cluster_ids == [0, 1]
    assert load_ensemble(class_experts, class_router).cluster_ids == [0, 1]


# --------------------------------------------------------------------------- cost per step


class CountingRouter:
    """A router that counts its calls and rows, around an inner one."""

    def __init__(self, inner):
        self.inner, self.calls, self.rows = inner, 0, 0

    def __call__(self, x, t, cond=None):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x, t, cond)


@pytest.mark.parametrize("solver,evaluations", [("euler", 5), ("heun", 9)])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_router_runs_once_per_evaluation_on_the_cond_and_null_rows_together(
    gm4, strategy, solver, evaluations
):
    router = CountingRouter(random_router())
    experts = [Counting(e) for e in exact_experts(gm4)]
    ensemble = Ensemble(experts, range(4), router, 4, strategy=strategy, top_k=2)
    noise = torch.randn(6, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cond = Conditioning(class_labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    t_range = representable_range(ensemble.t_range, torch.float64)
    solve(guided(ensemble, 3.0), noise, 5, t_range=t_range, solver=solver, cond=cond)
    assert router.calls == evaluations  # 5 Euler steps; Heun: 2 per step but the last
    assert router.rows == evaluations * 12  # one batched pass: 6 cond rows + 6 null rows
    assert max(e.calls for e in experts) <= evaluations  # each expert at most once per pass


def test_top1_sending_every_row_to_one_expert_is_that_expert_exactly(gm4):
    experts = [Counting(e) for e in exact_experts(gm4)]

    def router(x, t, cond=None):  # every row to cluster 2
        return torch.tensor([0.0, 0.0, 9.0, 0.0], dtype=x.dtype).expand(x.shape[0], 4)

    ensemble = Ensemble(experts, range(4), router, 4, strategy="top1")
    x_t, t = flow_points(gm4, ensemble.t_range, n_t=4, per_t=3)
    seen = []
    experts[2].register_forward_pre_hook(lambda module, args: seen.append(args[0].data_ptr()))
    got = ensemble(x_t, t)
    assert [e.calls for e in experts] == [0, 0, 1, 0]
    assert seen == [x_t.data_ptr()]  # the batch itself, not an index_select copy of it
    assert torch.equal(got, experts[2].inner(x_t, t))


# --------------------------------------------------------------------------- nucleus strategy


def test_nucleus_at_top_p_one_is_full_and_at_tiny_top_p_is_top1_exactly(gm4):
    experts = exact_experts(gm4)
    x_t, t = flow_points(gm4, (0.05, 0.9), n_t=12, per_t=3)

    def uniform(x, t, cond=None):  # every weight tied: both must pick the lowest column
        return torch.zeros(x.shape[0], 4, dtype=x.dtype)

    for router in (random_router(3), uniform):

        def run(strategy, router=router, **kwargs):
            return Ensemble(experts, range(4), router, 4, strategy=strategy, **kwargs)(x_t, t)

        assert torch.equal(run("nucleus", top_p=1.0), run("full"))
        assert torch.equal(run("nucleus", top_p=1e-6), run("top1"))
        assert not torch.equal(run("nucleus", top_p=1e-6), run("full"))


def test_nucleus_equals_a_per_sample_loop_and_counts_what_it_runs(gm4):
    experts = [Counting(e) for e in exact_experts(gm4)]
    router = random_router(4)
    top_p = 0.7
    ensemble = Ensemble(experts, range(4), router, 4, strategy="nucleus", top_p=top_p)
    x_t, t = flow_points(gm4, ensemble.t_range, n_t=16, per_t=4)
    got = ensemble(x_t, t)
    rows, sizes = [], []
    for i in range(x_t.shape[0]):  # by hand: sort, keep until the kept weight reaches top_p
        w = torch.softmax(router(x_t[i : i + 1], t[i : i + 1]), dim=1)[0]
        order = sorted(range(4), key=lambda j: (-float(w[j]), j))
        kept, total = [], 0.0
        for j in order:
            kept.append(j)
            total += float(w[j])
            if total >= top_p:
                break
        sizes.append(len(kept))
        v = [experts[j].inner(x_t[i : i + 1], t[i : i + 1])[0] for j in kept]
        rows.append(sum(w[j] / total * vj for j, vj in zip(kept, v, strict=True)))
    assert rel_err(got, torch.stack(rows)) <= 1e-12
    assert len(set(sizes)) > 1 and min(sizes) >= 1  # k really varies from row to row
    assert max(e.calls for e in experts) == 1  # grouped: each expert once, on its rows
    usage = ensemble.expert_usage()
    assert [e.rows for e in experts] == (usage * x_t.shape[0]).round().long().tolist()
    assert abs(float(usage.sum()) - sum(sizes) / len(sizes)) <= 1e-12
    ensemble.reset_usage()
    assert float(ensemble.expert_usage().sum()) == 0.0


def test_expert_usage_of_full_top1_and_top_k(gm4):
    x_t, t = flow_points(gm4, (0.05, 0.9), n_t=8, per_t=2)
    for strategy, k, expected in (("full", 2, 4.0), ("top1", 2, 1.0), ("top-k", 3, 3.0)):
        ensemble = Ensemble(exact_experts(gm4), range(4), random_router(5), 4, strategy, top_k=k)
        ensemble(x_t, t)
        ensemble(x_t[:4], t[:4])
        assert float(ensemble.expert_usage().sum()) == expected
