"""Registering a CloudFormation resource type with moto's CloudFormation (for the embedded AWS's patches of
types moto skips: jamsdr/network_fidelity.py, rds_fidelity.py, traffic_emulation.py)."""

from __future__ import annotations

# moto finds CloudFormation models through CloudFormationModel.__subclasses__(), which holds weak references
# only: a model defined inside an install function would vanish with it.
_KEPT: list[type] = []


def register_model(model: type, type_name: str) -> None:
    """Make moto's CloudFormation build ``type_name`` resources with ``model`` (a CloudFormationModel)."""
    from moto.cloudformation import parsing  # noqa: PLC0415 - heavy; the embedded AWS only

    _KEPT.append(model)
    # moto builds its type map once from the subclasses and caches it: forget it so it sees this one.
    for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
        cached.cache_clear()
    if parsing.get_model_map().get(type_name) is not model:
        raise RuntimeError(f"moto did not register {type_name}: its CloudFormation model registry changed")
