"""Random initialisation on the host (kdjax.models.host_init): every kdjax parameter records its
initialiser, the drawn values have the jitted init's distributions and depend only on (seed,
path), and the train state is created without compiling an init program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from kdjax.config_lib import load_config
from kdjax.models.config import EncoderConfig
from kdjax.models.host_init import Init, Recorded, draw, host_params, recorded
from kdjax.models.model import abstract_params, build_model, init_params
from kdjax.train.optimizer import make_optimizer
from kdjax.train.state import create_state, random_params, state_shardings

SMALL = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
             intermediate_size=64, max_position_embeddings=64, embedding_size=16)


def _configs() -> dict[str, EncoderConfig]:
    return {
        "dense": EncoderConfig(**SMALL),
        "lf_v3": EncoderConfig(**SMALL, embedding_rank=4, ffn_rank=8, attention_rank=8),
        "scan": EncoderConfig(**SMALL, scan_layers=True),
        "generator": EncoderConfig(**SMALL, head="generator"),
        "classifier": EncoderConfig(**SMALL, head="classification", num_labels=3),
        "tokens": EncoderConfig(**SMALL, head="token_classification", num_labels=5),
    }


@pytest.mark.parametrize("name", list(_configs()))
def test_every_parameter_records_its_initialiser(name):
    cfg = _configs()[name]
    boxed = abstract_params(cfg, boxed=True)
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, Recorded))
    assert leaves and all(isinstance(x, Recorded) and x.init is not None for x in leaves)
    host = host_params(boxed, seed=3)
    want = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), abstract_params(cfg))
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), host)
    assert got == want


def test_host_values_match_the_jitted_init_in_distribution():
    cfg = EncoderConfig(**{**SMALL, "hidden_size": 64, "intermediate_size": 256})
    boxed = abstract_params(cfg, boxed=True)
    inits = {k: v.init for k, v in flatten_dict(
        jax.tree_util.tree_map(lambda b: b, boxed, is_leaf=lambda x: isinstance(x, Recorded)),
        sep="/").items()}
    host = flatten_dict(host_params(boxed, seed=0), sep="/")
    jitted = flatten_dict(jax.device_get(init_params(cfg, 0)), sep="/")
    assert host.keys() == jitted.keys() == inits.keys()
    for name, h in host.items():
        j, init = np.asarray(jitted[name]), inits[name]
        if init.kind != "normal":
            np.testing.assert_array_equal(h, j)  # zeros / ones: identical
            continue
        # normal(0, std) in both: sample std and mean within 6 standard errors of the target
        se = init.std / np.sqrt(h.size)
        for sample in (h, j):
            assert abs(sample.std() - init.std) < 6 * se / np.sqrt(2), name
            assert abs(sample.mean()) < 6 * se, name
        assert not np.array_equal(h, j)  # different streams


def test_a_leaf_depends_only_on_seed_and_path():
    a = draw(Init("normal", 0.02), (8, 4), np.float32, seed=1, path="x/kernel")
    np.testing.assert_array_equal(a, draw(Init("normal", 0.02), (8, 4), np.float32, 1, "x/kernel"))
    assert not np.array_equal(a, draw(Init("normal", 0.02), (8, 4), np.float32, 2, "x/kernel"))
    assert not np.array_equal(a, draw(Init("normal", 0.02), (8, 4), np.float32, 1, "y/kernel"))
    # a model that grows a head keeps the values of the leaves it shares
    base = flatten_dict(host_params(abstract_params(EncoderConfig(**SMALL), boxed=True), 5))
    cls = EncoderConfig(**SMALL, head="classification", num_labels=2)
    grown = flatten_dict(host_params(abstract_params(cls, boxed=True), 5))
    shared = [k for k in base if k in grown and k[0] == "encoder"]
    assert shared and all(np.array_equal(base[k], grown[k]) for k in shared)


def test_bf16_and_unknown_kinds():
    v = draw(Init("normal", 1.0), (64,), jnp.bfloat16, seed=0, path="p")
    assert v.dtype == jnp.bfloat16 and float(np.std(v.astype(np.float32))) > 0.5
    with pytest.raises(ValueError, match="unknown initialiser kind 'uniform'"):
        recorded(Init("uniform"), ("embed",))


def test_a_parameter_without_a_record_falls_back_to_the_jitted_init():
    import flax.linen as nn

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    def init(rng):
        return Plain().init(rng, jnp.zeros((1, 2)))["params"]

    assert host_params(jax.eval_shape(init, jax.random.key(0)), 0) is None
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sh = jax.tree_util.tree_map(lambda _: jax.sharding.NamedSharding(mesh, jax.P()),
                                jax.eval_shape(init, jax.random.key(0)))
    out = random_params(init, 0, sh)
    assert out["Dense_0"]["kernel"].shape == (2, 3)


def test_create_state_compiles_no_random_init(monkeypatch):
    """The state's params come from the host draw; the only program is the optimizer init
    (no threefry), and the same seed gives the same state."""
    cfg = EncoderConfig(**SMALL, embedding_rank=4)
    model = build_model(cfg)

    def init(rng):
        return {"student": model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]}

    train_cfg = load_config("configs/debug_distill.py").train
    tx, _ = make_optimizer(train_cfg)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
    from kdjax import sharding as shd

    with jax.set_mesh(mesh):
        _, shardings = state_shardings(init, tx, mesh, shd.get_rules("fsdp"))
        lowered: list[str] = []
        real_jit = jax.jit

        def spy(fn, *a, **k):
            jitted = real_jit(fn, *a, **k)

            class Spy:
                def __call__(self, *args):
                    lowered.append(jitted.lower(*args).as_text())
                    return jitted(*args)

            return Spy()

        monkeypatch.setattr(jax, "jit", spy)
        s1 = create_state(init, tx, 7, shardings)
        monkeypatch.setattr(jax, "jit", real_jit)
        s2 = create_state(init, tx, 7, shardings)
    assert len(lowered) == 1 and "threefry" not in lowered[0]
    host = host_params(jax.eval_shape(init, jax.random.key(0)), 7)
    for a, b, h in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params),
                       jax.tree_util.tree_leaves(host)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), h)
    assert int(s1.step) == 0 and s1.rng.dtype == jnp.uint32 and s1.rng.shape == (2,)
    mu = jax.tree_util.tree_leaves(s1.opt_state)
    assert all(not np.any(np.asarray(x)) for x in mu if np.ndim(x))
