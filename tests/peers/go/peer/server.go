// Server mode: an echo server. Accepts -conns connections one after
// another and echoes what each client sends until the client closes. The
// first stdout line is "listening <port>"; each connection's JSON line also
// has the SNI the client sent.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

type serverResult struct {
	common
	SNI      string `json:"sni"`
	Received int64  `json:"received"`
}

type serverOptions struct {
	clientCA, clientAuth, ocspFile *string
	noTickets                      *bool
}

func serverFlags() *serverOptions {
	return &serverOptions{
		clientCA:   flag.String("client-ca", "", "server: CA file for client certificates"),
		clientAuth: flag.String("client-auth", "none", "server: none|request|verify-if-given|require"),
		ocspFile:   flag.String("ocsp", "", "server: DER OCSP response to staple"),
		noTickets:  flag.Bool("no-tickets", false, "server: SessionTicketsDisabled"),
	}
}

func runServer(o *options, so *serverOptions, cfg *tls.Config) {
	cert := loadPair(o.certFile, o.keyFile)
	if *so.ocspFile != "" {
		var err error
		if cert.OCSPStaple, err = os.ReadFile(*so.ocspFile); err != nil {
			fail(err)
		}
	}
	cfg.Certificates = []tls.Certificate{cert}
	cfg.SessionTicketsDisabled = *so.noTickets
	if *so.clientCA != "" {
		cfg.ClientCAs = readPool(*so.clientCA)
	}
	switch *so.clientAuth {
	case "none":
		cfg.ClientAuth = tls.NoClientCert
	case "request":
		cfg.ClientAuth = tls.RequestClientCert
	case "verify-if-given":
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	case "require":
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	default:
		fail("bad -client-auth", *so.clientAuth)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
	enc := json.NewEncoder(os.Stdout)
	for i := 0; i < o.conns; i++ {
		raw, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		enc.Encode(serve(tls.Server(raw, cfg), o.exports, o.timeout))
	}
}

func serve(conn *tls.Conn, specs []exportSpec, timeout time.Duration) (res serverResult) {
	defer conn.Close()
	st, ok := handshake(conn, timeout, &res.common, specs)
	if !ok {
		return
	}
	res.SNI = st.ServerName
	// Echo until the client closes (close_notify or EOF). A TLS 1.3 client
	// certificate is only checked when its Certificate arrives, after the
	// server's Handshake() returned: errors show up here.
	n, err := io.Copy(conn, conn)
	res.Received = n
	if err != nil {
		res.Error = err.Error()
	}
	// Our Close sends close_notify.
	return
}
