#!/usr/bin/python
# Task Manager: check a VNC service (RFB version, security types, optional login).
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: tm_vnc_check
short_description: Check a VNC server's RFB version and security types, and log in
description:
  - Reads the RFB protocol version and the offered security types. With a password (and
    VNC Authentication offered) it logs in and reports the desktop name and size; a
    wrong password fails. Runs on the controller.
options:
  host: {description: Address of the VNC server, type: str, required: true}
  port: {description: TCP port, type: int, default: 5900}
  password: {description: VNC password, type: str, no_log: true}
  require_auth: {description: Fail when the server lets anyone in without a password, type: bool, default: true}
  timeout: {description: Seconds for connect and each read, type: int, default: 10}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tm_probes import ProbeError, vnc_probe


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            port=dict(type="int", default=5900),
            password=dict(type="str", no_log=True),
            require_auth=dict(type="bool", default=True),
            timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    p = module.params
    where = f"{p['host']}:{p['port']}"
    try:
        info = vnc_probe(p["host"], p["port"], p["timeout"], password=p["password"] or None)
    except ProbeError as exc:
        module.fail_json(msg=f"{where}: {exc}")
    except OSError as exc:
        module.fail_json(msg=f"cannot reach {where}: {exc.strerror or exc}")
    if p["require_auth"] and "None" in info["security_types"]:
        module.fail_json(msg=f"{where}: the VNC server accepts connections without a password", vnc=info)
    summary = f"{where}: RFB {info['server_version']}, security {', '.join(info['security_types'])}"
    if info.get("authenticated"):
        summary += f"; logged in, desktop {info['desktop_name']!r} {info['width']}x{info['height']}"
    module.exit_json(changed=False, vnc=info, msg=summary)


if __name__ == "__main__":
    main()
