"""Trainer classes with Dassl's names, hooks and log lines: TrainerBase -> SimpleTrainer -> TrainerX."""
import datetime
import os
import time
from collections import OrderedDict

import torch
from tqdm import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import DataManager
from .errors import ConfigError, LossDivergedError
from .evaluator import build_evaluator, compute_accuracy, write_results
from .meters import AverageMeter, MetricMeter


class TrainerBase:
    """Keeps the registered (model, optimizer, scheduler) triples and the epoch loop."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()

    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise KeyError(f"Found duplicate model names: {name}")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        all_names = list(self._models.keys())
        if names is None:
            return all_names
        names = names if isinstance(names, list) else [names]
        for name in names:
            if name not in all_names:
                raise KeyError(f"Model {name!r} is not registered; registered: {all_names}")
        return names

    def checkpoint_state(self, name):
        """What a checkpoint stores for a registered module: by default its state_dict.

        Class-dependent constants should be registered as non-persistent buffers so that only
        learned values are saved (and base->new evaluation can load them).
        """
        return self._models[name].state_dict()

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                {
                    "state_dict": self.checkpoint_state(name),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                },
                os.path.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )

    def resume_model_if_exist(self, directory):
        names = self.get_model_names()
        paths = {name: latest_checkpoint(os.path.join(directory, name)) for name in names}
        if not names or any(path is None for path in paths.values()):
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        for name, path in paths.items():
            print(f'Loading checkpoint from "{path}"')
            checkpoint = load_checkpoint(path, self.device)
            self._models[name].load_state_dict(checkpoint["state_dict"], strict=False)
            print("Loaded model weights")
            if self._optims[name] is not None and checkpoint["optimizer"] is not None:
                self._optims[name].load_state_dict(checkpoint["optimizer"])
                print("Loaded optimizer")
            if self._scheds[name] is not None and checkpoint["scheduler"] is not None:
                self._scheds[name].load_state_dict(checkpoint["scheduler"])
                print("Loaded scheduler")
            start_epoch = checkpoint["epoch"]
            print(f"Previous epoch: {start_epoch}")
        return start_epoch

    def load_model(self, directory, epoch=None):
        """Load learned weights for evaluation (strict about shapes, tolerant of missing keys)."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = f"model.pth.tar-{epoch}" if epoch else "model-best.pth.tar"
        for name in self.get_model_names():
            path = os.path.join(directory, name, model_file)
            if not os.path.isfile(path):
                available = sorted(os.listdir(os.path.dirname(path))) if os.path.isdir(os.path.dirname(path)) else []
                raise FileNotFoundError(
                    f'Model not found at "{path}". Checkpoints there: {available or "none"}; '
                    "pass the trained MAX_EPOCH to --load-epoch."
                )
            checkpoint = load_checkpoint(path, self.device)
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint["epoch"]})')
            missing, unexpected = self._models[name].load_state_dict(checkpoint["state_dict"], strict=False)
            if unexpected:
                raise RuntimeError(f"{path} holds weights this {name} does not have: {unexpected}")
            self.loaded_epoch = checkpoint["epoch"]

    def set_model_mode(self, mode="train", names=None):
        if mode not in ("train", "eval"):
            raise KeyError(f"mode must be 'train' or 'eval', got {mode!r}")
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            where = f"epoch {getattr(self, 'epoch', 0) + 1}, batch {getattr(self, 'batch_idx', 0) + 1}"
            raise LossDivergedError(
                f"Loss is infinite or NaN at {where}. Training stopped; checkpoints already written are kept. "
                "Lower OPTIM.LR or check the inputs."
            )

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    def get_current_lr(self, names=None):
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """Builds data and model from a config; trains, checkpoints, tests and writes results."""

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.USE_CUDA else "cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.loaded_epoch = None
        self.eval_only = False
        self.build_data_loader()
        if cfg.TEST.FINAL_MODEL == "best_val" and self.val_loader is None and not cfg.TEST.NO_TEST:
            raise ConfigError("TEST.FINAL_MODEL best_val needs a validation split, but this dataset has none; "
                              "use last_step (model selection must never look at the test split).")
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -float("inf")

    def check_cfg(self, cfg):
        """Hook for trainers to validate their config keys."""

    def build_data_loader(self):
        self.dm = DataManager(self.cfg)
        self.train_loader_x = self.dm.train_loader_x
        self.train_loader_u = self.dm.train_loader_u
        self.val_loader = self.dm.val_loader
        self.test_loader = self.dm.test_loader
        self.num_classes = self.dm.num_classes
        self.num_source_domains = self.dm.num_source_domains
        self.lab2cname = self.dm.lab2cname

    def build_model(self):
        raise NotImplementedError("Trainers build their model in build_model()")

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME or self.output_dir)
        self.time_start = time.time()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            result = self.test(split="val", write=False)
            if result > self.best_result:
                self.best_result = result
                self.save_model(self.epoch, self.output_dir, val_result=result, model_name="model-best.pth.tar")
        if last_epoch or (freq > 0 and (self.epoch + 1) % freq == 0):
            self.save_model(self.epoch, self.output_dir)

    def after_train(self):
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = round(time.time() - self.time_start)
        print(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, input):
        return self.model(input)

    def inference_batches(self, loader, split):
        """Yield ``(logits, labels)`` over an evaluation loader (trainers may serve cached features)."""
        for batch in tqdm(loader, desc=f"eval {split}", leave=False, dynamic_ncols=True):
            inputs, labels = self.parse_batch_test(batch)
            yield self.model_inference(inputs), labels

    def before_test(self):
        """Hook: compute anything fixed during evaluation (e.g. text features) once per test."""

    def after_test(self):
        """Hook: release what before_test computed."""

    @torch.no_grad()
    def test(self, split=None, write=True):
        """Evaluate; return accuracy. Writes ``results.json`` for the final test split."""
        started = time.time()
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            loader = self.val_loader
        else:
            split, loader = "test", self.test_loader
        print(f"Evaluate on the *{split}* set")
        self.before_test()
        try:
            for logits, labels in self.inference_batches(loader, split):
                self.evaluator.process(logits, labels)
        finally:
            self.after_test()
        results = self.evaluator.evaluate()
        if write and split == "test":
            self.last_results = write_results(
                os.path.join(self.output_dir, "results.json"), self.cfg, results, self.evaluator.per_class,
                split=split, eval_only=self.eval_only,
                epoch=self.loaded_epoch if self.loaded_epoch is not None else self.max_epoch,
                num_examples=len(loader.dataset), elapsed_s=round(time.time() - started, 3),
            )
        return next(iter(results.values()))


class TrainerX(SimpleTrainer):
    """Trains on labelled data only (``train_loader_x``)."""

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time, data_time = AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            freq = self.cfg.TRAIN.PRINT_FREQ
            if (self.batch_idx + 1) % freq == 0 or self.num_batches < freq:
                remaining = (self.num_batches - self.batch_idx - 1) + (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = datetime.timedelta(seconds=int(batch_time.avg * remaining))
                print(
                    f"epoch [{self.epoch + 1}/{self.max_epoch}] batch [{self.batch_idx + 1}/{self.num_batches}] "
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) data {data_time.val:.3f} ({data_time.avg:.3f}) "
                    f"{losses} lr {self.get_current_lr():.4e} eta {eta}"
                )
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def finish_batch(self):
        """Call at the end of forward_backward: steps the epoch scheduler after the last batch."""
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()


__all__ = ["TrainerBase", "SimpleTrainer", "TrainerX", "compute_accuracy"]
