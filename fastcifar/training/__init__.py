from fastcifar.training.trainer import Trainer

__all__ = ["Trainer"]
