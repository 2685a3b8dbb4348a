"""Local AWS emulator for the tests of `infra`: moto plus small, named additions.

Every addition lives in its own module and says in its docstring what moto
lacks and what the addition does:

- ``runcommand``   -- Run Command that runs (SendCommand & co., addition 1)
- ``instance_info`` -- DescribeInstanceInformation (addition 2)
- ``imds``         -- simulated instance metadata endpoint (part of 1 and 6)
- ``cfn_fleets``   -- CloudFormation spot fleets with LaunchTemplateConfigs,
                      EC2Fleet, fleet replacement (addition 3)
- ``cfn_delete``   -- stack deletion that deletes (addition 4)
- ``prices``       -- realistic spot prices and a Pricing API (addition 5)
- ``faults``       -- fault injection (addition 6)
- ``cfn_extra_types`` -- SecurityGroupEgress and PlacementGroup in stacks
                      (addition 8)
- ``cfn_timing``   -- stack creation and deletion that take time
                      (addition 9)
- ``control``      -- the /_emulator control API, reset and call counts
                      (addition 7)
- ``node_auth``    -- node credentials, IAM policies enforced on their S3
                      requests (addition 10)
- ``node_path``    -- a minimal PATH for the commands (addition 11)
- ``remote_script`` -- AWS-RunRemoteScript (addition 12)
- ``cfn_instances`` -- AWS::EC2::Instance from a launch template (addition 13)
- ``user_data``    -- the user data of infra's controller instances runs,
                      with systemctl/shutdown shims (addition 14)
- ``shutdown``     -- instances that shut themselves down, processes that
                      die with their instance, EC2 actions of node
                      credentials evaluated (addition 15)
- ``fabric``       -- EFA devices that fi_info / fi_pingpong see, and
                      their faults (addition 17)

``app`` is the WSGI middleware in front of moto's own server application.
"""
