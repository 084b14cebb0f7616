"""glow_tf.optim in isolation: the linear warm-up, Adamax's first and skipped updates, the EMA ramp and swap."""

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import config_lib, optim


# ----------------------------------------------------------------------------- linear warm-up
def _lr(schedule, step):
    return float(schedule(tf.constant(step, tf.int64)).numpy())


def test_warmup_counts_the_current_batch_so_step_0_already_moves():
    schedule = optim.LinearWarmup(1e-3, global_batch=16, warmup_images=160)
    assert _lr(schedule, 0) == pytest.approx(1e-4, rel=1e-6)  # 16 of 160 images, not 0
    assert _lr(schedule, 1) == pytest.approx(2e-4, rel=1e-6)
    assert _lr(schedule, 4) == pytest.approx(5e-4, rel=1e-6)


def test_warmup_reaches_the_peak_exactly_at_the_boundary_and_stays_there():
    schedule = optim.LinearWarmup(1e-3, global_batch=16, warmup_images=160)
    assert _lr(schedule, 8) == pytest.approx(9e-4, rel=1e-6)  # 144 images seen
    assert _lr(schedule, 9) == np.float32(1e-3)  # 160 images: the boundary, the peak itself
    for step in (10, 11, 1000, 10**9):
        assert _lr(schedule, step) == np.float32(1e-3)


def test_warmup_that_is_not_a_multiple_of_the_batch_caps_at_the_peak():
    schedule = optim.LinearWarmup(2.0, global_batch=16, warmup_images=100)
    assert _lr(schedule, 0) == pytest.approx(2.0 * 16 / 100, rel=1e-6)
    assert _lr(schedule, 5) == pytest.approx(2.0 * 96 / 100, rel=1e-6)
    assert _lr(schedule, 6) == 2.0  # 112 images > 100: capped, not 2.24


def test_zero_warmup_is_the_peak_from_step_0():
    schedule = optim.LinearWarmup(5e-4, global_batch=16, warmup_images=0)
    assert _lr(schedule, 0) == np.float32(5e-4) and _lr(schedule, 7) == np.float32(5e-4)
    assert schedule.get_config() == {"peak": 5e-4, "global_batch": 16, "warmup_images": 0}


def test_warmup_inside_tf_function_matches_eager():
    schedule = optim.LinearWarmup(1e-3, global_batch=8, warmup_images=40)
    traced = tf.function(schedule)
    for step in range(8):
        assert float(traced(tf.constant(step, tf.int64))) == _lr(schedule, step)


def _adamax(warmup_images, *variables):
    config = config_lib.default_config().optim
    config.update({"learning_rate": 1e-2, "warmup_images": warmup_images, "beta1": 0.9, "beta2": 0.999})
    optimizer = optim.make_optimizer(config, global_batch=4)
    optim.create_slots(optimizer, list(variables))
    return optimizer


def test_first_adamax_update_moves_by_the_step_0_warmup_rate():
    # Adamax's first update is lr * m / v = lr * sign(g) (bias-corrected); lr(0) = 1e-2 * 4 / 40.
    var = tf.Variable([1.0, -2.0, 3.0])
    optimizer = _adamax(40, var)
    optim.apply_adamax(optimizer, [tf.constant([0.5, -4.0, 2.0])], [var], tf.constant(True))
    np.testing.assert_allclose(var.numpy(), [1.0 - 1e-3, -2.0 + 1e-3, 3.0 - 1e-3], rtol=0, atol=1e-6)
    assert int(optimizer.iterations.numpy()) == 1
    optim.apply_adamax(optimizer, [tf.constant([0.5, -4.0, 2.0])], [var], tf.constant(True))
    np.testing.assert_allclose(var.numpy(), [1.0 - 3e-3, -2.0 + 3e-3, 3.0 - 3e-3], rtol=0, atol=1e-6)  # lr(1) = 2e-3


def test_skipped_adamax_update_changes_nothing():
    var = tf.Variable([1.0, -2.0])
    optimizer = _adamax(0, var)
    optim.apply_adamax(optimizer, [tf.constant([1.0, 1.0])], [var], tf.constant(True))
    before = [var.numpy(), optimizer.get_slot(var, "m").numpy(), optimizer.get_slot(var, "v").numpy()]
    optim.apply_adamax(optimizer, [tf.constant([np.nan, np.inf])], [var], tf.constant(False))
    after = [var.numpy(), optimizer.get_slot(var, "m").numpy(), optimizer.get_slot(var, "v").numpy()]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert int(optimizer.iterations.numpy()) == 1


# Two groups of the same shapes (one trace serves both), one singleton left out of every group.
_SHAPES = [[3, 3, 4, 5], [5], [2, 2], [3, 3, 4, 5], [5], [2, 2], [7]]
_GROUPS = [[3, 4, 5], [0, 1, 2]]


def _grouped_and_plain_updates(apply, grads_fn):
    rng = np.random.default_rng(1)
    values = [rng.standard_normal(s).astype(np.float32) for s in _SHAPES]
    out = {}
    for name, groups in (("plain", ()), ("grouped", _GROUPS)):
        variables = [tf.Variable(v) for v in values]
        optimizer = _adamax(40, *variables)

        def update(grads, apply, optimizer=optimizer, variables=variables, groups=groups):
            optim.apply_adamax(optimizer, grads, variables, apply, groups=groups)

        step = tf.function(update, autograph=False)
        for t in range(3):
            step([tf.constant(g) for g in grads_fn(t)], tf.constant(True))
        step([tf.constant(g) for g in grads_fn(3)], tf.constant(apply))
        out[name] = [
            x.numpy() for v in variables for x in (v, optimizer.get_slot(v, "m"), optimizer.get_slot(v, "v"))
        ] + [optimizer.iterations.numpy()]
        traced = step.get_concrete_function([tf.constant(g) for g in grads_fn(0)], tf.constant(True))
        out[name + "_ops"] = [op.type for op in traced.graph.get_operations()]
    return out


@pytest.mark.parametrize("apply", [True, False])
def test_grouped_adamax_updates_are_the_plain_ones_bit_for_bit(apply):
    rng = np.random.default_rng(2)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in _SHAPES] for _ in range(4)]
    if not apply:  # a skipped update with non-finite gradients: nothing may change, grouped or not
        grads[3] = [np.full(s, np.nan, np.float32) for s in _SHAPES]
    out = _grouped_and_plain_updates(apply, lambda t: grads[t])
    for a, b in zip(out["plain"], out["grouped"]):
        np.testing.assert_array_equal(a, b)
    assert out["plain_ops"].count("ResourceApplyAdaMax") == len(_SHAPES)
    assert out["grouped_ops"].count("ResourceApplyAdaMax") == 1  # the singleton; each group is one call
    assert out["grouped_ops"].count("StatefulPartitionedCall") == len(_GROUPS)


def test_grouped_global_norm_is_tf_global_norm_bit_for_bit():
    rng = np.random.default_rng(3)
    grads = [tf.constant(rng.standard_normal(s).astype(np.float32) * 10.0 ** rng.integers(-3, 3)) for s in _SHAPES]
    expected = tf.linalg.global_norm(grads).numpy()
    assert optim.global_norm(grads, _GROUPS).numpy() == expected
    assert tf.function(lambda g: optim.global_norm(g, _GROUPS))(grads).numpy() == expected
    assert optim.global_norm(grads).numpy() == expected
    _, norm, finite = optim.guard_gradients(tf.constant(1.0), grads, groups=_GROUPS)
    assert norm.numpy() == expected and bool(finite)


def test_step_variables_group_each_flow_step_once(tiny_model):
    model = tiny_model((8, 8, 3), 5)
    groups = model.step_variables()
    assert len(groups) == 2 * 2  # levels x steps
    flat = [v.ref() for g in groups for v in g]
    assert len(flat) == len(set(flat))
    trainable = {v.ref() for v in model.trainable_variables}
    assert set(flat) < trainable  # the priors are updated one by one
    for level_groups in (groups[:2], groups[2:]):  # the K steps of a level: one signature
        assert len({tuple((tuple(v.shape), v.dtype) for v in g) for g in level_groups}) == 1
    variables = model.trainable_variables
    indices = optim.update_groups(variables, groups, tf.distribute.get_strategy())
    assert [[variables[i].ref() for i in g] for g in indices] == [[v.ref() for v in g] for g in groups]


def test_grouped_moving_averages_are_the_plain_ones_bit_for_bit():
    rng = np.random.default_rng(4)
    values = [rng.standard_normal(s).astype(np.float32) for s in _SHAPES]
    moves = [[rng.standard_normal(s).astype(np.float32) for s in _SHAPES] for _ in range(4)]
    out = {}
    for name, groups in (("plain", ()), ("grouped", _GROUPS)):
        variables = [tf.Variable(v) for v in values]
        ema = optim.ExponentialMovingAverage(variables, 0.99)
        step = tf.function(lambda apply, ema=ema, groups=groups: ema.update(apply, groups=groups), autograph=False)
        for t, move in enumerate(moves):
            for v, dv in zip(variables, move):
                v.assign_add(dv)
            step(tf.constant(t != 2))  # update 2 is skipped
        out[name] = [a.numpy() for a in ema.averages] + [ema.num_updates.numpy()]
        traced = step.get_concrete_function(tf.constant(True))
        out[name + "_calls"] = [op.type for op in traced.graph.get_operations()].count("StatefulPartitionedCall")
    for a, b in zip(out["plain"], out["grouped"]):
        np.testing.assert_array_equal(a, b)
    assert out["plain_calls"] == 0 and out["grouped_calls"] == len(_GROUPS)


# ----------------------------------------------------------------------------- EMA
def _decay_at(ema, var, n):
    """The decay of the update after ``n`` updates: with average 0 and variable 1 it leaves ``1 - d``."""
    ema.num_updates.assign(n)
    ema.averages[0].assign(tf.zeros_like(var))
    var.assign(tf.ones_like(var))
    ema.update()
    return 1.0 - float(ema.averages[0].numpy()[0])


@pytest.mark.parametrize(
    "n, expected",
    [(0, 0.1), (1, 2 / 11), (8, 0.5), (90, 0.91), (889, 890 / 899), (890, 0.99), (891, 0.99), (10**6, 0.99)],
)
def test_ema_decay_ramps_up_as_tf_then_caps_at_the_decay(n, expected):
    var = tf.Variable([0.0])
    ema = optim.ExponentialMovingAverage([var], decay=0.99)
    assert _decay_at(ema, var, n) == pytest.approx(expected, abs=1e-6)
    assert int(ema.num_updates.numpy()) == n + 1


def test_ema_updates_follow_the_ramped_recursion():
    var = tf.Variable([2.0, -1.0])
    ema = optim.ExponentialMovingAverage([var], decay=0.5)
    expected = var.numpy().astype(np.float64)
    for n, value in enumerate([[4.0, 0.0], [1.0, 1.0], [0.0, 3.0], [8.0, -8.0]]):
        var.assign(value)
        ema.update()
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * np.asarray(value)
        np.testing.assert_allclose(ema.averages[0].numpy(), expected, rtol=1e-6)
    assert int(ema.num_updates.numpy()) == 4


def test_skipped_ema_update_changes_nothing_and_does_not_count():
    var = tf.Variable([1.0, 2.0])
    ema = optim.ExponentialMovingAverage([var], decay=0.9)
    var.assign([5.0, 5.0])
    ema.update(tf.constant(False))
    np.testing.assert_array_equal(ema.averages[0].numpy(), [1.0, 2.0])
    assert int(ema.num_updates.numpy()) == 0
    ema.update(tf.constant(True))
    np.testing.assert_allclose(ema.averages[0].numpy(), [0.1 * 1 + 0.9 * 5, 0.1 * 2 + 0.9 * 5], rtol=1e-6)


def test_ema_swap_twice_restores_weights_and_averages_exactly():
    rng = np.random.default_rng(0)
    variables = [tf.Variable(rng.normal(size=shape).astype(np.float32)) for shape in ([3], [2, 2])]
    ema = optim.ExponentialMovingAverage(variables, decay=0.9)
    for _ in range(3):
        for v in variables:
            v.assign_add(rng.normal(size=v.shape).astype(np.float32))
        ema.update()
    weights = [v.numpy() for v in variables]
    averages = [a.numpy() for a in ema.averages]
    assert not any(np.array_equal(w, a) for w, a in zip(weights, averages))
    ema.swap()
    for v, a, w, s in zip(variables, ema.averages, weights, averages):
        np.testing.assert_array_equal(v.numpy(), s)
        np.testing.assert_array_equal(a.numpy(), w)
    ema.swap()
    for v, a, w, s in zip(variables, ema.averages, weights, averages):
        np.testing.assert_array_equal(v.numpy(), w)
        np.testing.assert_array_equal(a.numpy(), s)


def test_ema_averaged_context_swaps_back_even_after_an_error():
    var = tf.Variable([1.0])
    ema = optim.ExponentialMovingAverage([var], decay=0.9)
    var.assign([3.0])
    with pytest.raises(RuntimeError, match="inside"):
        with ema.averaged():
            assert var.numpy()[0] == 1.0
            raise RuntimeError("inside")
    assert var.numpy()[0] == 3.0 and ema.averages[0].numpy()[0] == 1.0


def test_ema_reset_copies_the_weights_and_restarts_the_ramp():
    var = tf.Variable([1.0])
    ema = optim.ExponentialMovingAverage([var], decay=0.9)
    var.assign([4.0])
    ema.update()
    ema.reset()
    assert ema.averages[0].numpy()[0] == 4.0 and int(ema.num_updates.numpy()) == 0


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_ema_decay_outside_the_open_unit_interval_is_rejected(decay):
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\), got "):
        optim.ExponentialMovingAverage([tf.Variable([0.0])], decay=decay)


# ----------------------------------------------------------------------------- bookkeeping variable names
def test_slots_and_averages_share_names_and_still_checkpoint_by_path(tmp_path):
    """Slots read ``m``/``v``, averages ``ema_average`` (cheap to create); each restores into its own variable."""
    variables = [tf.Variable(tf.fill([3], float(i)), name=f"level0/step{i}/actnorm/bias") for i in range(3)]
    optimizer = optim.make_optimizer(config_lib.default_config().optim, global_batch=4)
    optim.create_slots(optimizer, variables)
    ema = optim.ExponentialMovingAverage(variables, 0.99)
    slots = [optimizer.get_slot(v, s) for v in variables for s in ("m", "v")]
    assert [s.name for s in slots] == ["m:0", "v:0"] * 3
    assert {a.name for a in ema.averages} == {"ema_average:0"}
    assert variables[1].name == "level0/step1/actnorm/bias:0"  # model variables keep their readable names
    for i, slot in enumerate(slots):
        slot.assign(tf.fill([3], 10.0 + i))
    for i, average in enumerate(ema.averages):
        average.assign(tf.fill([3], 100.0 + i))
    path = tf.train.Checkpoint(optimizer=optimizer, variables=variables, ema=ema).save(str(tmp_path / "ckpt"))

    fresh = [tf.Variable(tf.zeros([3]), name=f"level0/step{i}/actnorm/bias") for i in range(3)]
    optimizer2 = optim.make_optimizer(config_lib.default_config().optim, global_batch=4)
    optim.create_slots(optimizer2, fresh)
    ema2 = optim.ExponentialMovingAverage(fresh, 0.99)
    tf.train.Checkpoint(optimizer=optimizer2, variables=fresh, ema=ema2).restore(path).assert_consumed()
    restored = [optimizer2.get_slot(v, s) for v in fresh for s in ("m", "v")]
    for i, slot in enumerate(restored):
        np.testing.assert_array_equal(slot.numpy(), np.full([3], 10.0 + i, np.float32))
    for i, average in enumerate(ema2.averages):
        np.testing.assert_array_equal(average.numpy(), np.full([3], 100.0 + i, np.float32))
    for i, var in enumerate(fresh):
        np.testing.assert_array_equal(var.numpy(), np.full([3], float(i), np.float32))


def test_shared_variable_names_keeps_the_last_part_only():
    with optim.shared_variable_names():
        a = tf.Variable(1.0, name="a/b/m")
        b = tf.Variable(1.0, name="plain")
    c = tf.Variable(1.0, name="a/b/m")
    assert (a.name, b.name, c.name) == ("m:0", "plain:0", "a/b/m:0")
