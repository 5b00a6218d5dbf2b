"""Train state, its sharded initialisation, and the pure train step (compiled once, state donated).

The step returns metric *sums* plus denominators; the host normalises them (t5x/clu convention), so
microbatching and data parallelism never change what a logged number means.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ext5.model import losses
from ext5.model.configs import T5Config
from ext5.model.sharding import mesh_rules
from ext5.model.t5 import Transformer
from ext5.train import optimizer as optim
from ext5.train import partitioning

Batch = Mapping[str, jax.Array]



@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


def model_inputs(batch: Batch) -> dict[str, Any]:
    """The Transformer keyword arguments present in a (packed or unpacked) batch."""
    keys = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions")
    return {k: batch[k] for k in keys if k in batch}


@dataclasses.dataclass
class StepFns:
    """Everything compiled for one (model, mesh, optimizer): init and train step with fixed shardings."""

    model: Transformer
    mesh: Mesh
    rules: list
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings (for restore)
    init: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]
    batch_sharding: NamedSharding
    # The jitted step itself (explicit in/out shardings, state donated) and the lengths it was built for:
    # `train`, `plan` (ahead-of-time compile for a TPU slice), eval and convert share this one construction.
    step_jit: Any = None
    input_len: int = 0
    target_len: int = 0

    def param_shapes(self) -> dict[str, list[int]]:
        flat = flax.traverse_util.flatten_dict(self.abstract_state.params, sep="/")
        return {k: list(v.shape) for k, v in flat.items()}

    def abstract_batch(self, global_batch_size: int, packed: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch the step takes, as sharded ShapeDtypeStructs (packed: segment ids and positions)."""
        keys = {"encoder_input_tokens": self.input_len, "decoder_input_tokens": self.target_len,
                "decoder_target_tokens": self.target_len}
        if packed:
            keys.update(encoder_segment_ids=self.input_len, decoder_segment_ids=self.target_len,
                        encoder_positions=self.input_len, decoder_positions=self.target_len)
        out = {k: jax.ShapeDtypeStruct((global_batch_size, n), jnp.int32, sharding=self.batch_sharding)
               for k, n in keys.items()}
        out["decoder_loss_weights"] = jax.ShapeDtypeStruct((global_batch_size, self.target_len), jnp.float32,
                                                           sharding=self.batch_sharding)
        return out

    def lower(self, global_batch_size: int, packed: bool = True) -> jax.stages.Lowered:
        """Lower the train step for abstract inputs (no arrays needed): `.compile()` gives memory and
        cost analyses and HLO text, also for devices this host does not have (TPU topologies)."""
        with mesh_rules(self.mesh, self.rules):
            return self.step_jit.lower(self.abstract_state, self.abstract_batch(global_batch_size, packed))


def _strip_boxes(tree: Any) -> Any:
    """Values of flax partitioning boxes without applying their constraint (for abstract values)."""
    return nn.meta.map_axis_meta(lambda box: box.unbox(apply_constraint=False), tree)


def _dummy_batch(input_len: int, target_len: int) -> dict[str, jnp.ndarray]:
    return {"encoder_input_tokens": jnp.ones((1, input_len), jnp.int32),
            "decoder_input_tokens": jnp.ones((1, target_len), jnp.int32),
            "decoder_target_tokens": jnp.ones((1, target_len), jnp.int32)}


def build(cfg: T5Config, mesh: Mesh, rules: list, tx: optax.GradientTransformation, *,
          input_len: int, target_len: int, num_microbatches: int = 1, z_loss: float = 1e-4,
          loss_normalizing_factor: float | str | None = None, dropout_seed: int = 0,
          learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None) -> StepFns:
    """Build the sharded init and train-step functions (ahead-of-time shardings, donated state)."""
    tx = optax.with_extra_args_support(tx)
    model = Transformer(cfg)
    dummy = _dummy_batch(input_len, target_len)
    replicated = NamedSharding(mesh, P())

    def init_variables(rng):
        return model.init({"params": rng, "dropout": rng}, dummy["encoder_input_tokens"],
                          dummy["decoder_input_tokens"], dummy["decoder_target_tokens"], enable_dropout=False)

    with mesh_rules(mesh, rules):
        # An abstract key: nothing may run eagerly under `set_mesh` (the mesh may be a TPU topology).
        boxed = jax.eval_shape(init_variables, jax.ShapeDtypeStruct((2,), jnp.uint32))["params"]
        logical_specs = nn.get_partition_spec(boxed)
        params_sh = partitioning.logical_to_sharding(logical_specs, mesh, rules)
        params_abs = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  _strip_boxes(boxed), params_sh)
        partitioning.assert_params_sufficiently_sharded(params_sh, mesh, params_abs)
        abstract_opt = jax.eval_shape(tx.init, params_abs)
        # ext5's Adafactor: slots sharded like their parameters. Other optimizers: let GSPMD propagate.
        opt_sh = optim.state_shardings(abstract_opt, params_abs, params_sh)
        if opt_sh is None:
            opt_sh = jax.jit(tx.init).lower(params_abs).compile().output_shardings
            # Leaves not derived from a parameter (step counters) come back on one device: replicate them.
            opt_sh = jax.tree.map(
                lambda s: s if isinstance(s, NamedSharding) and s.mesh == mesh else replicated, opt_sh)
    state_sh = TrainState(step=replicated, params=params_sh, opt_state=opt_sh)
    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        params=params_abs,
        opt_state=jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_opt, opt_sh))

    def init(rng: jax.Array) -> TrainState:
        params = nn.meta.unbox(init_variables(rng)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    base_rng = jax.random.PRNGKey(dropout_seed)
    enable_dropout = cfg.dropout_rate > 0
    data_sh = NamedSharding(mesh, P("data"))

    def loss_and_aux(params, batch, loss_weights, normalizer, rng):
        logits = model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                             batch["decoder_target_tokens"], enable_dropout=enable_dropout,
                             rngs={"dropout": rng}, **model_inputs(batch))
        loss_sum, aux = losses.loss_sums(logits, batch["decoder_target_tokens"], loss_weights,
                                         batch["decoder_loss_weights"], z_loss=z_loss)
        return loss_sum / normalizer, aux

    grad_fn = jax.value_and_grad(loss_and_aux, has_aux=True)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_rng, state.step)
        # Loss weights and normaliser of the *whole* batch (microbatches then sum to the full-batch loss).
        weights, normalizer = losses.loss_weights_and_normalizer(
            batch["decoder_loss_weights"], loss_normalizing_factor, segment_ids=batch.get("decoder_segment_ids"))
        batch = dict(batch)
        # Plain counts for logging (accuracy per real token), independent of the loss weighting.
        real = jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
        if num_microbatches <= 1:
            (loss, aux), grads = grad_fn(state.params, batch, weights, normalizer, rng)
        else:
            def split(x):
                # Strided split keeps every device's local rows spread over all microbatches (no reshuffle).
                x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
                return jnp.swapaxes(x, 0, 1)
            mbs = jax.tree.map(split, (batch, weights))

            def body(i, carry):
                g_acc, l_acc, a_acc = carry
                mb, w = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x[i], data_sh), mbs)
                (l, a), g = grad_fn(state.params, mb, w, normalizer, jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, a_acc, a))

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            _, aux0 = jax.eval_shape(lambda: loss_and_aux(state.params, jax.tree.map(lambda x: x[0], mbs[0]),
                                                          mbs[1][0], normalizer, rng))
            zeros_a = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux0)
            grads, loss, aux = jax.lax.fori_loop(0, num_microbatches, body, (zeros_g, jnp.float32(0.0), zeros_a))
        # One step counter: the schedule and Adafactor's decay read TrainState.step (optimizers without
        # extra-args support ignore it and keep their own count).
        updates, opt_state = tx.update(grads, state.opt_state, state.params, step=state.step)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "loss_sum": aux["loss_sum"], "z_loss_sum": aux["z_loss_sum"], "correct_sum": aux["correct_sum"],
            "weight_sum": aux["weight_sum"],
            "nonpadding_tokens": jnp.sum(real) + jnp.sum((batch["encoder_input_tokens"] > 0).astype(jnp.float32)),
            "grad_norm": optax.tree.norm(grads),
        }
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    with mesh_rules(mesh, rules):
        init_jit = jax.jit(init, out_shardings=state_sh)
        step_jit = jax.jit(train_step, in_shardings=(state_sh, data_sh), out_shardings=(state_sh, replicated),
                           donate_argnums=(0,))

    def init_fn(rng):
        with mesh_rules(mesh, rules):
            return init_jit(rng)

    def step_fn(state, batch):
        with mesh_rules(mesh, rules):
            return step_jit(state, batch)

    return StepFns(model=model, mesh=mesh, rules=rules, state_shardings=state_sh, abstract_state=abstract_state,
                   init=init_fn, train_step=step_fn, batch_sharding=data_sh, step_jit=step_jit,
                   input_len=input_len, target_len=target_len)


def build_for_training(*, model: T5Config, partition: partitioning.PartitionConfig, optimizer: Any,
                       learning_rate: Any, batch_size: int, input_len: int, target_len: int,
                       num_microbatches: int = 1, z_loss: float = 1e-4, loss_normalizing_factor: Any = None,
                       random_seed: int = 0, devices: Sequence[Any] | None = None) -> StepFns:
    """The StepFns `trainer.train` runs, from train()'s own arguments (mesh, rules, optimizer, microbatching,
    loss settings, dropout seed): the one construction `train` and `ext5 plan` share. `devices` defaults to
    this host's; `ext5 plan` passes a TPU slice's topology devices."""
    mesh = partitioning.make_mesh(partition.num_partitions, devices)
    partitioning.check_batch_size(batch_size, mesh, num_microbatches)
    lr_fn = optim.learning_rate_fn(learning_rate)
    tx = optimizer(learning_rate=lr_fn)
    return build(model, mesh, partition.rules(), tx, input_len=input_len, target_len=target_len,
                 num_microbatches=num_microbatches, z_loss=z_loss, loss_normalizing_factor=loss_normalizing_factor,
                 dropout_seed=random_seed, learning_rate_fn=lr_fn)


def normalise_metrics(summed: Mapping[str, float], num_steps: int) -> dict[str, float]:
    """Turn summed step metrics (over `num_steps` steps) into the numbers people read."""
    w = max(float(summed.get("weight_sum", 0.0)), 1.0)
    out = {
        "loss": float(summed["loss"]) / num_steps,
        "cross_ent_loss_per_token": float(summed["loss_sum"] - summed["z_loss_sum"]) / w,
        "z_loss_per_token": float(summed["z_loss_sum"]) / w,
        "accuracy": float(summed["correct_sum"]) / w,
        "grad_norm": float(summed["grad_norm"]) / num_steps,
    }
    if "learning_rate" in summed:
        out["learning_rate"] = float(summed["learning_rate"]) / num_steps
    return out


def host_metrics_sum(metrics_list: list[Mapping[str, jax.Array]]) -> dict[str, float]:
    """Fetch a list of per-step device metrics once and sum them (one device->host transfer)."""
    fetched = jax.device_get(metrics_list)
    out: dict[str, float] = {}
    for m in fetched:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + float(np.asarray(v))
    return out
