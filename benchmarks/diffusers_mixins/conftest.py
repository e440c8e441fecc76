"""Runs diffusers' accelerator-gated mixin tests on the CPU: drops the "requires a hardware accelerator" skip marks
(the test bodies themselves are device-generic through diffusers' ``torch_device``). Only for this folder."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        for node in item.listchain():
            node.own_markers[:] = [
                m for m in node.own_markers if not (m.name == "skipif" and "hardware accelerator" in str(m.kwargs.get("reason", "")))
            ]
