"""A tiny TCP app for capture tests. Dual-stack on [::]:PORT. Per connection, reads one line:
  PEER            -> replies "<peer ip> <peer port>\n" (what the app sees as its client)
  BYTES <n>       -> sends n deterministic bytes (i*7+3 mod 251) then closes
  ECHO            -> echoes everything until the client half-closes, then closes
Runs until killed. Threads per connection are fine here: this is the test's app, not netsteer.
"""
import socket
import sys
import threading


def pattern(n):
    block = bytes((i * 7 + 3) % 251 for i in range(251 * 256))
    out = bytearray()
    while len(out) < n:
        out += block[: n - len(out)]
    return bytes(out)


def handle(c, addr):
    with c:
        f = c.makefile("rb")
        line = f.readline().decode().strip()
        if line == "PEER":
            host = addr[0]
            if host.startswith("::ffff:"):
                host = host[7:]
            c.sendall(f"{host} {addr[1]}\n".encode())
        elif line.startswith("BYTES "):
            c.sendall(pattern(int(line.split()[1])))
        elif line == "ECHO":
            buf = f.read1(65536) if hasattr(f, "read1") else b""
            while buf:
                c.sendall(buf)
                buf = f.read1(65536)
            c.shutdown(socket.SHUT_WR)


def main():
    port = int(sys.argv[1])
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(1024)
    print("ready", flush=True)
    while True:
        c, addr = s.accept()
        threading.Thread(target=handle, args=(c, addr), daemon=True).start()


if __name__ == "__main__":
    main()
