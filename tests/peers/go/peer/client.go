// Client mode: makes -conns connections one after another (sharing one
// ClientSessionCache, so later ones can resume), sends -size bytes of a
// fixed pattern (byte i is i % 251) while reading the echo back, then
// half-closes with close_notify, reads until the server closes and checks
// the echo byte for byte.
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"net"
	"os"
	"time"
)

type clientResult struct {
	common
	OCSP     string `json:"ocsp"`
	Sent     int    `json:"sent"`
	Received int    `json:"received"`
	EchoOK   bool   `json:"echo_ok"`
}

type clientOptions struct {
	addr, sni, caFile *string
	insecure          *bool
	size              *int
}

func clientFlags() *clientOptions {
	return &clientOptions{
		addr:     flag.String("addr", "", "client: host:port"),
		sni:      flag.String("sni", "localhost", "client: ServerName (SNI and the name verified)"),
		caFile:   flag.String("ca", "", "client: CA file (RootCAs)"),
		insecure: flag.Bool("insecure", false, "client: InsecureSkipVerify"),
		size:     flag.Int("size", 0, "client: bytes to send and expect echoed"),
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func runClient(o *options, co *clientOptions, cfg *tls.Config) {
	cfg.ServerName = *co.sni
	cfg.InsecureSkipVerify = *co.insecure
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if *co.caFile != "" {
		cfg.RootCAs = readPool(*co.caFile)
	}
	if o.certFile != "" {
		cfg.Certificates = []tls.Certificate{loadPair(o.certFile, o.keyFile)}
	}
	data := pattern(*co.size)
	enc := json.NewEncoder(os.Stdout)
	failed := false
	for i := 0; i < o.conns; i++ {
		res := connect(*co.addr, cfg, o.exports, data, o.timeout)
		enc.Encode(res)
		if res.Error != "" || !res.EchoOK {
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func connect(addr string, cfg *tls.Config, specs []exportSpec, data []byte, timeout time.Duration) (res clientResult) {
	res.PeerCerts = []string{}
	raw, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		res.Error = err.Error()
		return
	}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	st, ok := handshake(conn, timeout, &res.common, specs)
	if !ok {
		return
	}
	res.OCSP = hex.EncodeToString(st.OCSPResponse)
	// Write and read concurrently so that neither side's buffers fill up.
	// close_notify only goes out once the whole echo is back: a KeyUpdate
	// the server sends mid-stream is then answered (Go cannot answer one
	// after its close_notify).
	werr := make(chan error, 1)
	go func() {
		n, err := conn.Write(data)
		res.Sent = n
		werr <- err
	}()
	got := make([]byte, len(data))
	n, rerr := io.ReadFull(conn, got)
	got = got[:n]
	if err := <-werr; err != nil {
		res.Error = "write: " + err.Error()
		return
	}
	if rerr != nil {
		res.Error = "read: " + rerr.Error()
		return
	}
	if err := conn.CloseWrite(); err != nil {
		res.Error = "close: " + err.Error()
		return
	}
	// Nothing more may come before the server's close_notify.
	rest, rerr := io.ReadAll(conn)
	got = append(got, rest...)
	res.Received = len(got)
	res.EchoOK = bytes.Equal(got, data)
	if rerr != nil {
		res.Error = "read: " + rerr.Error()
	}
	return
}
