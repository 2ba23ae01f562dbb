// Package layout holds the tests that keep the module's shape: the import
// rules between the top-level areas (pxe and images import nothing else of
// the project, nodeagent only images, provisioner only pxe and images) and
// one package comment in every package. It has no code of its own.
//
//	go test ./provisioner/internal/layout
package layout
