"""Stand-in for pywinrm in ansible-playbook runs that have no WinRM host.

ansible-playbook imports every connection plugin at start (PlaybookExecutor.run preloads
them), and the winrm plugin imports pywinrm with requests, requests-ntlm, spnego and
cryptography, a noticeable part of every run's start-up. prepare.py puts this
directory first on PYTHONPATH only when no target host uses the winrm protocol; the
plugin then loads without pywinrm (it handles the ImportError) and is never used.
"""
raise ImportError("pywinrm is not loaded in this run: none of its hosts uses the winrm protocol")
