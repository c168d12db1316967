#!/usr/bin/python
# Task Manager: check an RDP service (X.224 negotiation, security protocol, TLS certificate).
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: tm_rdp_check
short_description: Check an RDP service by completing the X.224 connection negotiation
description:
  - Sends an X.224 Connection Request with an RDP Negotiation Request offering TLS and
    CredSSP, reports the security protocol the server selects and, for TLS/CredSSP, the
    TLS version and server certificate (expiry, self-signed). Runs on the controller.
options:
  host: {description: Address of the RDP server, type: str, required: true}
  port: {description: TCP port, type: int, default: 3389}
  username: {description: Sent as the mstshash routing cookie only, type: str, default: ""}
  validate_certs: {description: Fail unless the certificate is trusted, type: bool, default: false}
  ca_bundle: {description: PEM file of trusted CAs when validate_certs is true, type: path}
  require_nla: {description: Fail unless the server selects CredSSP (Network Level Authentication), type: bool, default: false}
  min_cert_days: {description: Fail when the certificate expires within this many days (0 = no check), type: int, default: 0}
  timeout: {description: Seconds for connect and each read, type: int, default: 10}
"""

import datetime
import ssl

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tm_probes import ProbeError, rdp_probe


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            port=dict(type="int", default=3389),
            username=dict(type="str", default=""),
            validate_certs=dict(type="bool", default=False),
            ca_bundle=dict(type="path"),
            require_nla=dict(type="bool", default=False),
            min_cert_days=dict(type="int", default=0),
            timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    p = module.params
    where = f"{p['host']}:{p['port']}"
    try:
        info = rdp_probe(p["host"], p["port"], p["timeout"], username=p["username"], ca_file=p["ca_bundle"],
                         validate_certs=p["validate_certs"])
    except ssl.SSLCertVerificationError as exc:
        module.fail_json(msg=f"TLS certificate of {where} not trusted: {exc.verify_message or exc}")
    except ProbeError as exc:
        module.fail_json(msg=f"{where}: {exc}")
    except OSError as exc:
        module.fail_json(msg=f"cannot reach {where}: {exc.strerror or exc}")
    problems = []
    if p["require_nla"] and info["selected_protocol_id"] not in (2, 8):
        problems.append(f"Network Level Authentication is not enforced (selected {info['selected_protocol']})")
    cert = info.get("certificate") or {}
    if p["min_cert_days"] and cert.get("not_after"):
        left = datetime.datetime.fromisoformat(cert["not_after"]) - datetime.datetime.now(datetime.timezone.utc)
        info["certificate_days_left"] = left.days
        if left.days < p["min_cert_days"]:
            problems.append(f"certificate expires in {left.days} days (minimum {p['min_cert_days']})")
    if problems:
        module.fail_json(msg=f"{where}: " + "; ".join(problems), rdp=info)
    module.exit_json(changed=False, rdp=info,
                     msg=f"{where}: selected {info['selected_protocol']}" + (f", {info['tls_version']}" if info.get("tls_version") else ""))


if __name__ == "__main__":
    main()
