// Userspace link emulator (this kernel has no sch_netem): creates tun device "tunA" in netns
// scA and "tunB" in netns scB and forwards IP packets between them, holding every packet for
// a fixed one-way delay D (microseconds) in each direction. Rate limits are added separately
// with `tc qdisc ... tbf` on the tun devices (egress, before the delay).
// usage: delayrelay DELAY_US
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>
#define QN 65536
#define PKT 2048
typedef struct { long long t; int len; char b[PKT]; } pkt_t;
typedef struct { pkt_t *q; unsigned head, tail; } queue_t;   // FIFO: constant delay keeps order
static long long now_ns(void){ struct timespec ts; clock_gettime(CLOCK_MONOTONIC,&ts); return ts.tv_sec*1000000000LL+ts.tv_nsec; }
static int mktun(const char *ns, const char *name){
  char p[256]; snprintf(p,sizeof p,"/run/netns/%s",ns);
  int nfd=open(p,O_RDONLY); if(nfd<0||setns(nfd,CLONE_NEWNET)){perror(p);exit(1);} close(nfd);
  int fd=open("/dev/net/tun",O_RDWR); if(fd<0){perror("tun");exit(1);}
  struct ifreq ifr; memset(&ifr,0,sizeof ifr); ifr.ifr_flags=IFF_TUN|IFF_NO_PI;
  strncpy(ifr.ifr_name,name,IFNAMSIZ-1); if(ioctl(fd,TUNSETIFF,&ifr)){perror("TUNSETIFF");exit(1);}
  fcntl(fd,F_SETFL,O_NONBLOCK); return fd;
}
int main(int argc,char**argv){
  long long d=(argc>1?atoll(argv[1]):0)*1000LL;
  int fd[2]; fd[0]=mktun("scA","tunA"); fd[1]=mktun("scB","tunB");
  queue_t q[2]; for(int i=0;i<2;i++){ q[i].q=malloc(sizeof(pkt_t)*QN); q[i].head=q[i].tail=0; }
  unsigned long long drops=0, fwd=0;
  printf("ready delay_us=%lld\n",d/1000); fflush(stdout);
  for(;;){
    long long t=now_ns(), next=-1;
    for(int i=0;i<2;i++){ // release due packets of direction i (read from fd[i], written to fd[1-i])
      while(q[i].head!=q[i].tail && q[i].q[q[i].head%QN].t<=t){
        pkt_t *p=&q[i].q[q[i].head%QN]; if(write(fd[1-i],p->b,p->len)<0) drops++; else fwd++; q[i].head++; }
      if(q[i].head!=q[i].tail){ long long w=q[i].q[q[i].head%QN].t-t; if(next<0||w<next) next=w; }
    }
    struct pollfd pf[2]={{fd[0],POLLIN,0},{fd[1],POLLIN,0}};
    struct timespec ts={0,0}, *tp=NULL;
    if(next>=0){ ts.tv_sec=next/1000000000LL; ts.tv_nsec=next%1000000000LL; tp=&ts; }
    int r=ppoll(pf,2,tp,NULL); if(r<0&&errno!=EINTR){perror("ppoll");return 1;}
    for(int i=0;i<2;i++) if(pf[i].revents&POLLIN){
      for(;;){ if(q[i].tail-q[i].head>=QN){ char junk[PKT]; if(read(fd[i],junk,PKT)<=0) break; drops++; continue; }
        pkt_t *p=&q[i].q[q[i].tail%QN]; int n=read(fd[i],p->b,PKT); if(n<=0) break;
        p->len=n; p->t=now_ns()+d; q[i].tail++; }
    }
  }
}
