"""Addition 16: every instance gets a private address this machine can bind."""

import ipaddress
import socket

from test_faults import imds_get


def test_instances_get_distinct_loopback_addresses_that_can_be_bound_and_reached(aws, emulator):
    ids = aws.run_instances(3)
    ec2 = aws.client("ec2")
    res = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    insts = [i for r in res for i in r["Instances"]]
    addrs = [i["PrivateIpAddress"] for i in insts]
    assert len(set(addrs)) == 3, addrs
    for i in insts:
        a = ipaddress.ip_address(i["PrivateIpAddress"])
        assert a in ipaddress.ip_network("127.0.0.0/8") and a.packed[1] >= 16, a
        # the network interface says the same
        assert i["NetworkInterfaces"][0]["PrivateIpAddress"] == i["PrivateIpAddress"]
        # and the instance's metadata
        assert imds_get(emulator, i["InstanceId"], "local-ipv4") == (200, i["PrivateIpAddress"])
    # a server binds its node's address; a client reaches it there
    srv = socket.socket()
    try:
        srv.bind((addrs[0], 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        cli = socket.create_connection((addrs[0], port), timeout=5)
        conn, peer = srv.accept()
        conn.close()
        cli.close()
    finally:
        srv.close()


def test_a_second_emulator_takes_another_block(aws):
    from harness import Emulator

    (mine,) = aws.run_instances(1)
    first = aws.client("ec2").describe_instances(InstanceIds=[mine])["Reservations"][0]["Instances"][0]
    with Emulator() as other:
        ec2 = other.client("ec2", account_id="210987654321")
        r = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="c6i.xlarge")
        theirs = r["Instances"][0]["PrivateIpAddress"]
    ours = first["PrivateIpAddress"]
    assert ours.split(".")[1] != theirs.split(".")[1], (ours, theirs)
