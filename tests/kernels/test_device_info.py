"""kernels/triton/device_info.py: the launchers' SM count comes from the device (queried once per device);
the interpreter and CPU-only runs use the H200 constant."""

from types import SimpleNamespace

import torch


def test_num_sms_queries_the_device_once_and_falls_back_in_the_interpreter(monkeypatch):
    from kernels.triton import device_info  # not at collection: kernels.triton jits at import

    calls = []

    def props(index):
        calls.append(index)
        return SimpleNamespace(multi_processor_count=78 + index)

    device_info._num_sms.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    try:
        assert [device_info.num_sms(), device_info.num_sms("cuda"), device_info.num_sms("cuda:1"),
                device_info.num_sms(1)] == [78, 78, 79, 79]
        assert calls == [0, 1]  # cached per device
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert device_info.num_sms() == device_info.H200_NUM_SMS == 132
    finally:
        device_info._num_sms.cache_clear()
