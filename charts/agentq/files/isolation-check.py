# The sandbox pod's start-up check (sandbox.isolation.mode bubblewrap), run as its init container: can bubblewrap
# make a user namespace and the rest, and mount a fresh /proc, in this pod? Exit 0, or 1 with one line naming
# what the cluster must give the pod.
import subprocess
import sys

cmd = ["bwrap", "--unshare-user", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
       "--proc", "/proc", "--dev", "/dev", "true"]
try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
except FileNotFoundError:
    sys.exit("agentq sandbox cannot isolate candidates here: bubblewrap (bwrap) is not in the image")
if done.returncode == 0:
    print("sandbox isolation: bubblewrap makes user, PID, IPC, mount and network namespaces and a fresh /proc")
    sys.exit(0)
err = " ".join(done.stderr.split())
if "proc" in err:
    why = ("/proc is masked by the container runtime, so bubblewrap cannot mount a fresh one: the container needs "
           "procMount: Unmasked (the ProcMountType feature gate on the API server and the kubelet)")
elif "namespace" in err or "uid map" in err or "not permitted" in err:
    why = ("user namespaces are refused: the pod needs the seccomp profile of sandbox.isolation.seccompProfile "
           "(files/sandbox-seccomp.json on each node, e.g. with sandbox.isolation.installProfile) and a kernel "
           "that allows unprivileged user namespaces (user.max_user_namespaces > 0, no AppArmor restriction)")
else:
    why = "bubblewrap failed"
sys.exit(f"agentq sandbox cannot isolate candidates here: {why} (bwrap: {err}); see docs/deploy.md, "
         "'The sandbox', or set sandbox.isolation.mode=weak to run candidates without bubblewrap")
