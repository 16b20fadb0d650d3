"""The Keras callbacks of a run: early stopping (``train.early_stopping_patience``,
``train.keep_weights``), the EMA swaps (``train.ema_momentum``), the plateau schedule, one progress
bar and a log line per epoch, every epoch's metrics to MLflow; and the interrupt rule that ends
the MLflow run as KILLED."""

from __future__ import annotations

import contextlib
import logging
import time

log = logging.getLogger(__name__)


def callbacks(t, keep: str, ema: float | None, steps: int, chief: bool, schedule, member: str = "") -> list:
    """Every callback of ``fit``, in the order they run; ``member`` (e.g. ``member1``, a seed
    ensemble's second model) prefixes the MLflow metrics and names the progress bar."""
    import keras

    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                             patience=int(t.early_stopping_patience),
                                             restore_best_weights=keep == "best_val")
    before, after = ema_callbacks(keras, ema)
    out = [*before, stopping, *after]
    out.append(progress(int(t.epochs), steps, enabled=chief, desc=f"train {member}".strip()))
    if chief:
        out.append(mlflow_epoch_logger(f"{member}_" if member else ""))
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        out.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5))
    return out


def ema_callbacks(keras, momentum: float | None) -> tuple[list, list]:
    """Callbacks around early stopping for ``train.ema_momentum``: (before, after).

    Before it: ``SwapEMAWeights(swap_on_epoch=True)`` puts the average in the model for
    validation and at each epoch's end, so the best epoch early stopping records is the average's.
    After it: when early stopping ends training before the last epoch, the average is handed to
    ``fit``'s final step (which otherwise writes the raw training weights into the model)."""
    if momentum is None:
        return [], []
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)

    class KeepAverageOnEarlyStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if self.model.stop_training and epoch < self.params["epochs"] - 1:
                swap._finalize_ema_values()  # what SwapEMAWeights does itself at the last epoch

    return [swap], [KeepAverageOnEarlyStop()]


def mlflow_epoch_logger(prefix: str = ""):
    """A Keras callback: logs every epoch's metrics (and learning rate) to the active run, each
    key after ``prefix``."""
    import keras
    import mlflow

    from kws.cli import uninterrupted

    class Logger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            with uninterrupted():  # never stopped mid-transaction: the run must still be ended
                mlflow.log_metrics({prefix + k: float(v) for k, v in logs.items()}, step=epoch)

    return Logger()


def progress(epochs: int, steps: int, enabled: bool = True, desc: str = "train"):
    """A Keras callback: one progress bar over every step of the run (tqdm: rate and ETA,
    redrawn at most every few seconds so logs stay short) and one log line per epoch with its
    metrics, its duration and the time left if every epoch runs (early stopping may end sooner)."""
    import keras
    from tqdm import tqdm

    from kws.cli import raise_if_interrupted

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=epochs * steps, desc=desc, unit="step", disable=not enabled,
                            mininterval=2.0, dynamic_ncols=True)
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            raise_if_interrupted()  # a signal whose exception a library swallowed still stops training
            self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and "learning_rate" not in logs:  # where the schedule is: history.csv, MLflow
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs = logs or {}
            done = epoch + 1
            per_epoch = (time.perf_counter() - self.started) / done
            left = per_epoch * (epochs - done)
            shown = {k: logs[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs}
            self.bar.set_postfix({k: f"{float(v):.4f}" for k, v in shown.items()}, refresh=False)
            log.info("epoch %d/%d: %s (%.1f s/epoch; at most %s left%s)", done, epochs,
                     " ".join(f"{k} {float(v):.4f}" for k, v in shown.items()), per_epoch,
                     time.strftime("%H:%M:%S", time.gmtime(left)), "" if desc == "train" else f"; {desc}")

        def on_train_end(self, logs=None):
            self.bar.close()

    return Progress()


@contextlib.contextmanager
def killed_on_interrupt(chief: bool):
    """Ctrl-C or SIGTERM (see :func:`kws.cli.terminate_as_interrupt`) ends the MLflow run as
    KILLED, not FAILED and never left RUNNING; the model folder is written only at the end."""
    try:
        yield
    except KeyboardInterrupt:
        if chief:
            import mlflow

            log.warning("training interrupted: MLflow run ended as KILLED, no model written")
            mlflow.end_run(status="KILLED")
        raise
