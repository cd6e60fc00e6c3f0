#!/usr/bin/python3
"""Two small proxies for tests/test_cli_client.c, each on a free loopback port that it
writes to PORT_FILE once listening; both log one line per connection to LOG_FILE:

  tls PORT_FILE LOG_FILE CERT KEY TARGET_PORT [LISTEN_PORT]
        a TLS-terminating reverse proxy: https on its port (LISTEN_PORT, else a free one),
        plain http to 127.0.0.1:TARGET_PORT (kilnd behind nginx, as users deploy it)
  forward PORT_FILE LOG_FILE
        a forward HTTP proxy (what http_proxy= points at): reads the request line's
        absolute URL, connects there and relays the bytes both ways; one request per
        connection (it asks the upstream to close after it)

Only the standard library; stops when killed.
"""
import socket
import ssl
import sys
import threading


def pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(client, upstream, first=b""):
    if first:
        upstream.sendall(first)
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    pipe(client, upstream)


def log(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def serve(port_file, handle, port=0):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle, args=(client,), daemon=True).start()


def main():
    mode, port_file, log_file = sys.argv[1:4]
    port = 0
    if mode == "tls":
        port = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        cert, key, target = sys.argv[4], sys.argv[5], int(sys.argv[6])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        def handle(client):
            try:
                secure = context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log(log_file, "handshake failed: %s" % e)
                client.close()
                return
            log(log_file, "tls connection")
            relay(secure, socket.create_connection(("127.0.0.1", target)))
    else:
        def handle(client):
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    client.close()
                    return
                head += data
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, url, version = line.split(" ")
            log(log_file, "proxied %s %s" % (method, url))
            hostport, _, path = url.split("://", 1)[1].partition("/")
            host, _, port = hostport.partition(":")
            upstream = socket.create_connection((host, int(port or 80)))
            # one request per connection (this proxy reads only the first): the upstream
            # closes after it, and so does the client's side
            headers = [h for h in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
                       if not h.lower().startswith((b"connection:", b"proxy-connection:"))]
            body = head.split(b"\r\n\r\n", 1)[1]
            first = ("%s /%s %s\r\n" % (method, path, version)).encode()
            first += b"\r\n".join(headers + [b"Connection: close"]) + b"\r\n\r\n" + body
            relay(client, upstream, first)
    serve(port_file, handle, port)


if __name__ == "__main__":
    main()
