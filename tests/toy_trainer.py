"""A minimal trainer for engine tests: a linear layer on average-pooled pixels."""
from torch import nn
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY, TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy
from vmfcoop.engine.config import add_node


class PooledLinear(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


@TRAINER_REGISTRY.register()
class ToyTrainer(TrainerX):
    @staticmethod
    def extend_cfg(cfg):
        add_node(cfg, "TRAINER.TOY", {"HIDDEN": 0})

    def build_model(self):
        self.model = PooledLinear(self.num_classes).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        self.finish_batch()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}


@TRAINER_REGISTRY.register()
class DivergingToyTrainer(ToyTrainer):
    """Its loss becomes NaN in the second epoch (to test how training stops)."""

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        loss = F.cross_entropy(self.model(image), label)
        if self.epoch >= 1:
            loss = loss * float("nan")
        self.model_backward_and_update(loss)
        self.finish_batch()
        return {"loss": loss.item()}
