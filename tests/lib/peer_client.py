"""Client side of peer_server.py, run inside a netns by the tests.
  peer_client.py HOST PORT peer               -> prints what the server saw as our address
  peer_client.py HOST PORT bytes N            -> downloads N bytes, verifies the pattern, prints "ok N"
  peer_client.py HOST PORT echo N             -> sends N bytes, half-closes, expects them back
  peer_client.py HOST PORT concurrent C N     -> C parallel 'bytes N' downloads, prints "ok C"
  peer_client.py HOST PORT probe [timeout]    -> prints ok / refused / timeout / reset
  peer_client.py HOST PORT burst N P [timeout] -> N 'PEER' requests, P at a time; prints
                                                 "ok K fail F" (K answered with our own address)
"""
import socket
import sys
import threading

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from peer_server import pattern  # noqa: E402


def conn(host, port, timeout=30):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def recv_all(s):
    chunks = []
    while True:
        b = s.recv(1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def download(host, port, n):
    with conn(host, port) as s:
        s.sendall(f"BYTES {n}\n".encode())
        data = recv_all(s)
    if data != pattern(n):
        raise SystemExit(f"mismatch: got {len(data)} bytes, want {n}")


def main():
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "peer":
        with conn(host, port) as s:
            s.sendall(b"PEER\n")
            print(recv_all(s).decode().strip())
    elif mode == "bytes":
        n = int(sys.argv[4])
        download(host, port, n)
        print("ok", n)
    elif mode == "echo":
        # Half-close: we send everything then SHUT_WR; the reply must still arrive in full.
        n = int(sys.argv[4])
        payload = pattern(n)
        with conn(host, port) as s:
            def send():
                s.sendall(b"ECHO\n" + payload)
                s.shutdown(socket.SHUT_WR)
            t = threading.Thread(target=send)
            t.start()
            data = recv_all(s)
            t.join()
        if data != payload:
            raise SystemExit(f"echo mismatch: {len(data)} of {n}")
        print("ok", n)
    elif mode == "concurrent":
        c, n = int(sys.argv[4]), int(sys.argv[5])
        errors = []

        def one():
            try:
                download(host, port, n)
            except BaseException as e:  # noqa: BLE001
                errors.append(repr(e))

        ts = [threading.Thread(target=one) for _ in range(c)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise SystemExit(f"{len(errors)} failed: {errors[:3]}")
        print("ok", c)
    elif mode == "burst":
        n, par = int(sys.argv[4]), int(sys.argv[5])
        timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0
        from concurrent.futures import ThreadPoolExecutor

        import time
        reasons = {}

        def one(_):
            t0 = time.monotonic()
            try:
                with conn(host, port, timeout) as s:
                    s.sendall(b"PEER\n")
                    seen = recv_all(s).decode().split()
                    mine = s.getsockname()[0]
                    if seen[:1] == [mine[7:] if mine.startswith("::ffff:") else mine]:
                        return True
                    why = f"answer {seen[:1]}"
            except OSError as e:
                why = type(e).__name__
            why += f" after {time.monotonic() - t0:.1f}s"
            reasons[why] = reasons.get(why, 0) + 1
            return False

        with ThreadPoolExecutor(par) as ex:
            ok = sum(ex.map(one, range(n)))
        # The failures, by kind, after the counts (callers read the first four words).
        print("ok", ok, "fail", n - ok, *(f"[{k}: {v}]" for k, v in sorted(reasons.items())))
    elif mode == "probe":
        timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
        try:
            with conn(host, port, timeout) as s:
                s.sendall(b"PEER\n")
                r = s.recv(100)
                print("ok" if r else "closed")
        except ConnectionRefusedError:
            print("refused")
        except ConnectionResetError:
            print("reset")
        except (socket.timeout, TimeoutError):
            print("timeout")


if __name__ == "__main__":
    main()
