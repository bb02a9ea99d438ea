"""How many devices a training config gets, and how many streams all of them train together,
counted as Lightning counts devices."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from charlm.errors import CharLMError


def resolve_num_devices(cfg: DictConfig | dict) -> int:
    """The number of devices (processes per node) the Trainer of ``cfg`` would use, resolved as
    Lightning resolves ``trainer.accelerator`` and ``trainer.devices``: ``"auto"``/``"gpu"``
    pick the accelerator, ``devices="auto"`` is its ``auto_device_count()`` (1 on the CPU),
    ``-1`` all GPUs, ``"0,1"`` or ``[0, 1]`` those GPUs (Lightning's own parsing helpers, so
    the count is the one the Trainer gets).

    Raises:
        CharLMError: if Lightning refuses the combination (e.g. ``trainer.devices=-1`` on the
            CPU, or a GPU accelerator on a machine without one), with its reason.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    if OmegaConf.is_config(cfg):
        accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
        devices = OmegaConf.select(cfg, "trainer.devices", default="auto")
    else:  # a resolved config (plain containers)
        trainer = cfg.get("trainer") or {}
        accelerator, devices = trainer.get("accelerator", "auto"), trainer.get("devices", "auto")
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    try:
        if not isinstance(accelerator, str):
            raise TypeError("only an accelerator name (auto, cpu, gpu, cuda, mps, tpu) can be checked here")
        name = accelerator
        if name == "auto":
            name = _AcceleratorConnector._choose_auto_accelerator()
        elif name == "gpu":
            name = _AcceleratorConnector._choose_gpu_accelerator_backend()
        if name not in AcceleratorRegistry:
            raise ValueError(f"unknown accelerator {name!r}; Lightning has {sorted(AcceleratorRegistry.available_accelerators())}")
        acc = AcceleratorRegistry[name]["accelerator"]
        if not acc.is_available():
            raise MisconfigurationException(f"the {name} accelerator is not available on this machine")
        if devices == "auto":
            devices = acc.auto_device_count()
        return len(acc.get_parallel_devices(acc.parse_devices(devices)))
    except (MisconfigurationException, TypeError, ValueError) as e:
        raise CharLMError(
            f"trainer.devices={devices!r} with trainer.accelerator={accelerator!r} is not a valid device choice "
            f"here: {str(e).strip()}"
        ) from None


def global_streams(cfg: dict, world_size: int | None = None) -> int:
    """The streams all ranks of a run train together: ``data.batch_size`` (per device) x the
    number of processes, ``world_size`` when known (a checkpoint records the one its run had),
    else devices (:func:`resolve_num_devices`) x ``trainer.num_nodes`` of the resolved config ``cfg``.

    Raises:
        CharLMError: if the number of processes is to be resolved and Lightning refuses the
            device choice (see :func:`resolve_num_devices`).
    """
    if world_size is None:
        nodes = int((cfg.get("trainer") or {}).get("num_nodes", 1) or 1)
        world_size = resolve_num_devices(cfg) * nodes
    return int(cfg["data"]["batch_size"]) * int(world_size)
