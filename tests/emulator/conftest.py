"""pytest fixtures: one emulator per test run, one account per test."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from harness import Emulator, new_account_id  # noqa: E402

AMI = "ami-12c6146b"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}


@pytest.fixture(scope="session")
def emulator() -> Any:
    emu = Emulator().start()
    try:
        yield emu
    finally:
        emu.stop()
    # closing its stdin is enough to end the server (no SIGTERM needed)
    assert emu.exit_reason == "stdin"


class Aws:
    """Clients for one test's own account."""

    def __init__(self, emu: Emulator, account_id: str):
        self.emu = emu
        self.account_id = account_id

    def client(self, service: str, region: str = "us-east-1", **kwargs: Any) -> Any:
        return self.emu.client(service, account_id=self.account_id, region=region, **kwargs)

    def control(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        return self.emu.control(method, name, body, account_id=self.account_id)

    def env(self, region: str = "us-east-1") -> dict[str, str]:
        return self.emu.env(self.account_id, region)

    def run_instances(self, count: int = 1, tags: dict[str, str] | None = None, region: str = "us-east-1",
                      **kwargs: Any) -> list[str]:
        ec2 = self.client("ec2", region)
        spec = {}
        if tags:
            spec["TagSpecifications"] = [{"ResourceType": "instance",
                                          "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        resp = ec2.run_instances(ImageId=AMI, MinCount=count, MaxCount=count,
                                 InstanceType=kwargs.pop("InstanceType", "c6i.xlarge"), **spec, **kwargs)
        return [i["InstanceId"] for i in resp["Instances"]]

    def wait_invocation(self, command_id: str, instance_id: str, timeout: float = 15.0,
                        region: str = "us-east-1") -> dict[str, Any]:
        ssm = self.client("ssm", region)
        deadline = time.time() + timeout
        while True:
            inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            if inv["Status"] in TERMINAL or time.time() > deadline:
                return inv
            time.sleep(0.05)


@pytest.fixture
def aws(emulator: Emulator) -> Any:
    account = new_account_id()
    yield Aws(emulator, account)
    emulator.control("POST", "reset", {"account_id": account})
