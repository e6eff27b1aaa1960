package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// callTimeout bounds one CRI call; a kubelet uses 2 minutes, but a
// benchmark that waits that long has already failed.
const callTimeout = 60 * time.Second

// criClient talks CRI v1 to one runtime over its unix socket.
type criClient struct {
	conn *grpc.ClientConn
	rt   runtime.RuntimeServiceClient
	img  runtime.ImageServiceClient

	// onCreate, when set, learns the id of every sandbox RunPodSandbox made.
	onCreate func(id string)
	// interrupted names the pods whose RunPodSandbox the bench gave up on:
	// the runtime may still finish making them.
	interrupted []string
}

// dialCRI waits for the daemon to answer Version on socket, for at most wait.
func dialCRI(ctx context.Context, socket string, d *daemonProcess, wait time.Duration) (*criClient, error) {
	deadline := time.Now().Add(wait)
	for {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
			break
		}
		if !d.alive() {
			return nil, fmt.Errorf("%s exited (%v) before listening on %s; its log ends:\n%s", d.name, d.exitErr, socket, d.logTail(30))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not listen on %s within %s; its log ends:\n%s", d.name, socket, wait, d.logTail(30))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &criClient{conn: conn, rt: runtime.NewRuntimeServiceClient(conn), img: runtime.NewImageServiceClient(conn)}, nil
}

func (c *criClient) close() { c.conn.Close() }

func (c *criClient) version(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	v, err := c.rt.Version(ctx, &runtime.VersionRequest{})
	if err != nil {
		return "", err
	}
	return v.RuntimeName + " " + v.RuntimeVersion, nil
}

// waitReady polls Status until the runtime and its network say ready.
func (c *criClient) waitReady(ctx context.Context, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var last string
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.rt.Status(cctx, &runtime.StatusRequest{})
		cancel()
		if err == nil {
			ready := 0
			last = ""
			for _, cond := range st.GetStatus().GetConditions() {
				if cond.Type == runtime.RuntimeReady || cond.Type == runtime.NetworkReady {
					if cond.Status {
						ready++
					} else {
						last += fmt.Sprintf(" %s=false (%s: %s)", cond.Type, cond.Reason, cond.Message)
					}
				}
			}
			if ready == 2 {
				return nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s:%s", wait, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// verboseStatus is the part of PodSandboxStatus verbose info the bench
// reads. Both peapod and containerd put a JSON object with the pause's
// `pid` under the key "info"; peapod adds its pod cgroup and shaping.
type verboseStatus struct {
	PID    int `json:"pid"`
	Cgroup *struct {
		PodPath string `json:"podPath"`
	} `json:"cgroup"`
	Bandwidth json.RawMessage `json:"bandwidth"`
}

func (c *criClient) verbose(ctx context.Context, id string) (*verboseStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.rt.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("PodSandboxStatus %s: %w", id, err)
	}
	var v verboseStatus
	if err := json.Unmarshal([]byte(resp.Info["info"]), &v); err != nil {
		return nil, fmt.Errorf("PodSandboxStatus %s: verbose info is not JSON: %w", id, err)
	}
	return &v, nil
}

// podNamer makes PodSandboxConfigs that differ only in what must be unique
// (name, uid, hostname, log directory), the same for every runtime.
type podNamer struct {
	runID  string // unique per bench run
	logDir string
	seq    int
}

func (n *podNamer) next(prefix string, annotations map[string]string) (*runtime.PodSandboxConfig, error) {
	n.seq++
	name := fmt.Sprintf("%s-%03d", prefix, n.seq)
	uid := fmt.Sprintf("%s-%04d", n.runID, n.seq)
	// The kubelet creates the pod's log directory before RunPodSandbox.
	logDir := filepath.Join(n.logDir, "peapod-bench_"+name+"_"+uid)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	return &runtime.PodSandboxConfig{
		Metadata:     &runtime.PodSandboxMetadata{Name: name, Namespace: "peapod-bench", Uid: uid},
		Hostname:     name,
		LogDirectory: logDir,
		Labels:       map[string]string{"app": "peapod-bench"},
		Annotations:  annotations,
		Linux:        &runtime.LinuxPodSandboxConfig{},
	}, nil
}

// timedRun, timedStop and timedRemove time one call as the kubelet sees it.
func (c *criClient) timedRun(ctx context.Context, cfg *runtime.PodSandboxConfig) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	resp, err := c.rt.RunPodSandbox(ctx, &runtime.RunPodSandboxRequest{Config: cfg})
	d := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			c.interrupted = append(c.interrupted, cfg.Metadata.Name)
		}
		return "", d, fmt.Errorf("RunPodSandbox %s: %w", cfg.Metadata.Name, err)
	}
	if c.onCreate != nil {
		c.onCreate(resp.PodSandboxId)
	}
	return resp.PodSandboxId, d, nil
}

func (c *criClient) timedStop(ctx context.Context, id string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	_, err := c.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id})
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("StopPodSandbox %s: %w", id, err)
	}
	return d, nil
}

func (c *criClient) timedRemove(ctx context.Context, id string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	_, err := c.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id})
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("RemovePodSandbox %s: %w", id, err)
	}
	return d, nil
}

// removeAllPods stops and removes every sandbox the runtime knows, the
// proper way, so that CNI DEL runs and the plugins undo their iptables
// rules and IP allocations. The daemons are private: every pod is ours.
// It lists again until nothing is left, because a RunPodSandbox that was
// in flight when the bench was interrupted may finish after the first list
// (or be rolled back: then its pod never shows up, and the wait for it
// ends after interruptedGrace).
func (c *criClient) removeAllPods(wait time.Duration) error {
	const interruptedGrace = 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	pending := map[string]bool{}
	for _, n := range c.interrupted {
		pending[n] = true
	}
	start := time.Now()
	var errs []error
	for rounds := 0; ; {
		resp, err := c.rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("ListPodSandbox: %w", err))...)
		}
		for _, p := range resp.Items {
			delete(pending, p.GetMetadata().GetName())
		}
		if len(resp.Items) == 0 {
			if len(pending) == 0 || time.Since(start) > interruptedGrace {
				return nil
			}
			if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
				return err
			}
			continue
		}
		if rounds == 5 {
			return errors.Join(append(errs, fmt.Errorf("%d sandboxes still listed after %d rounds of removal", len(resp.Items), rounds))...)
		}
		rounds++
		errs = nil
		for _, p := range resp.Items {
			if _, err := c.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				errs = append(errs, fmt.Errorf("StopPodSandbox %s: %w", p.Id, err))
			}
			if _, err := c.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				errs = append(errs, fmt.Errorf("RemovePodSandbox %s: %w", p.Id, err))
			}
		}
	}
}
