package store_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/store"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// pki writes a CA and certificates it signs (PEM files in dir), and
// returns their paths: name -> {cert, key}.
func pki(t *testing.T, dir string, certs map[string]x509.ExtKeyUsage) (string, map[string][2]string) {
	t.Helper()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	caFile := write("ca.pem", "CERTIFICATE", caDER)
	out := map[string][2]string{}
	serial := int64(2)
	for name, usage := range certs {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		serial++
		der, err := x509.CreateCertificate(rand.Reader, c, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		out[name] = [2]string{write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kb)}
	}
	return caFile, out
}

// TestEtcdTLS: members that serve clients over TLS and require client
// certificates: a head with the CA and its client certificate works; one
// without a client certificate, or trusting another CA, is refused at
// open.
func TestEtcdTLS(t *testing.T) {
	dir := t.TempDir()
	ca, certs := pki(t, dir, map[string]x509.ExtKeyUsage{"server": x509.ExtKeyUsageServerAuth, "head": x509.ExtKeyUsageClientAuth})
	otherCA, _ := pki(t, t.TempDir(), nil)
	c := etcdtest.Start(t, etcdtest.Options{Members: 1, TLS: &etcdtest.TLS{CertFile: certs["server"][0], KeyFile: certs["server"][1], CAFile: ca,
		ClientCert: certs["head"][0], ClientKey: certs["head"][1]}})
	open := func(o store.EtcdOptions) (*store.Etcd, error) {
		o.Endpoints, o.Prefix, o.DialTimeout, o.RequestTimeout = c.Endpoints(), "/tls/", 2*time.Second, 2*time.Second
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return store.OpenEtcd(ctx, o)
	}
	s, err := open(store.EtcdOptions{CAFile: ca, CertFile: certs["head"][0], KeyFile: certs["head"][1]})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Txn(context.Background(), nil, []store.Op{store.Put("k", []byte("v"))}); err != nil {
		t.Fatal(err)
	}
	if kv, ok, err := s.Get(context.Background(), "k"); err != nil || !ok || string(kv.Value) != "v" {
		t.Fatalf("get over TLS: %v %v", ok, err)
	}
	if s, err := open(store.EtcdOptions{CAFile: ca}); err == nil {
		s.Close()
		t.Fatal("a head without a client certificate was let in")
	}
	if s, err := open(store.EtcdOptions{CAFile: otherCA, CertFile: certs["head"][0], KeyFile: certs["head"][1]}); err == nil {
		s.Close()
		t.Fatal("a head trusting another CA connected")
	}
}
