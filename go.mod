module github.com/dmthin/dmthin

go 1.26.0

require (
	github.com/docker/go-units v0.5.0
	github.com/moby/go-archive v0.3.3
	github.com/moby/sys/mountinfo v0.7.2
	github.com/moby/sys/user v0.4.1
	github.com/opencontainers/selinux v1.15.1
	github.com/sirupsen/logrus v1.10.2
	github.com/stretchr/testify v1.12.1
	go.etcd.io/bbolt v1.5.0
	golang.org/x/sys v0.50.0
)

require (
	github.com/containerd/log v0.1.0 // indirect
	github.com/cyphar/filepath-securejoin v0.5.1 // indirect
	github.com/klauspost/compress v1.18.7 // indirect
	github.com/moby/patternmatcher v0.6.1 // indirect
	github.com/moby/sys/sequential v0.7.0 // indirect
	github.com/moby/sys/userns v0.1.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)
