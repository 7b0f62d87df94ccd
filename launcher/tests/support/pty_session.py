"""Drives an interactive `vm_launcher run|shell` the way a person at a terminal does.

usage: pty_session.py VM_LAUNCHER ARGS...

Runs the command on a fresh pseudo-terminal (40 rows x 100 columns) as its controlling
terminal, waits for a shell prompt, and checks: `stty size` shows the window, a resize
reaches the guest, Ctrl-C interrupts a foreground `sleep` (and not the shell), `exit 5`
ends the session with status 5, and the terminal's settings are restored afterwards.
Prints one `ok: ...` line per check; exits 1 with the session's transcript on failure.
"""
import fcntl, os, select, struct, subprocess, sys, termios, time

def fail(why, out):
    print("FAIL:", why)
    print("--- transcript ---")
    print(out.decode(errors="replace"))
    sys.exit(1)

master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
before = termios.tcgetattr(slave)

def controlling_terminal():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)

env = dict(os.environ, TERM="xterm")
proc = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave, stderr=slave,
                        preexec_fn=controlling_terminal, env=env)
out = b""

def read_until(needle, timeout=90):
    global out
    end = time.time() + timeout
    while needle not in out and time.time() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
    return needle in out

def command(text, expect, why):
    start = len(out)
    os.write(master, text)
    end = time.time() + 90
    while time.time() < end:
        if expect in out[start:]:
            return
        read_until(b"\x00never\x00", 0.2)
    fail(why, out)

if not read_until(b"# "):
    fail("no shell prompt", out)
print("ok: prompt")
command(b"stty size\r", b"40 100", "stty size does not show the host window")
print("ok: stty size 40 100")
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
proc.send_signal(28)  # SIGWINCH, as the terminal would send
time.sleep(1)
command(b"stty size\r", b"50 132", "a resize did not reach the guest")
print("ok: resize 50 132")
started = time.time()
os.write(master, b"sleep 60\r")
time.sleep(2)
os.write(master, b"\x03")
command(b"echo $((6*7))\r", b"42", "Ctrl-C did not interrupt sleep")
print("ok: ctrl-c interrupted sleep after %.1fs" % (time.time() - started))
os.write(master, b"exit 5\r")
try:
    rc = proc.wait(timeout=120)
except subprocess.TimeoutExpired:
    proc.kill()
    fail("the session did not end", out)
if rc != 5:
    fail("exit status %d, not 5" % rc, out)
print("ok: exit status 5")
if termios.tcgetattr(slave) != before:
    fail("the terminal was not restored", out)
print("ok: terminal restored")
