#!/bin/sh
# PID 1 of vmd's test guest (busybox). Everything it prints goes to the serial console, where
# vmd's tests read it through `vmd logs`.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec >/dev/console 2>&1

arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | head -1; }
marker=$(arg bk.marker)
echo "BACKROOM-GUEST-UP marker=${marker:-none}"
# UEFI firmware leaves /sys/firmware/efi behind; a BIOS boot does not.
if [ -d /sys/firmware/efi ]; then echo "BACKROOM-FIRMWARE uefi"; else echo "BACKROOM-FIRMWARE bios"; fi

if [ "$(arg bk.poweroff)" = 1 ]; then
  echo "BACKROOM-GUEST-POWEROFF"
  poweroff -f
fi

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
         failover net_failover virtio_net cdrom isofs; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
# bk.acpi=1: the guest obeys the ACPI power button (a graceful shutdown); otherwise it ignores
# it, like a hung guest, and only a destroy stops it.
if [ "$(arg bk.acpi)" = 1 ]; then
  insmod /lib/modules/evdev.ko 2>/dev/null
  insmod /lib/modules/button.ko 2>/dev/null
  i=0
  while [ $i -lt 25 ] && [ ! -e /dev/input/event0 ]; do sleep 0.2; i=$((i+1)); done
  # In the foreground, logging to the console (there is no /var here).
  acpid -d -p /tmp/acpid.pid &
  echo "BACKROOM-ACPID $(ls /dev/input 2>/dev/null | tr '\n' ' ')"
fi
# virtio devices appear asynchronously after the modules load (slowly under TCG).
i=0
while [ $i -lt 50 ] && ! ls /dev/vd? >/dev/null 2>&1 && ! ls /sys/class/net/eth0 >/dev/null 2>&1; do
  sleep 0.2; i=$((i+1))
done
sleep 0.5
echo "BACKROOM-DISKS $(ls /dev/vd? 2>/dev/null | tr '\n' ' ')"

# The NoCloud seed: the read-only ISO 9660 disk that holds meta-data (busybox has no blkid).
seed=""
for dev in /dev/vd? /dev/sr?; do
  [ -b "$dev" ] || continue
  if mount -t iso9660 -o ro "$dev" /mnt/seed 2>/dev/null; then
    if [ -f /mnt/seed/meta-data ]; then seed=$dev; break; fi
    umount /mnt/seed
  fi
done
if [ -n "$seed" ]; then
  echo "BACKROOM-SEED device=$seed"
  echo "BACKROOM-META-DATA-BEGIN"; cat /mnt/seed/meta-data; echo "BACKROOM-META-DATA-END"
  echo "BACKROOM-NETWORK-CONFIG-BEGIN"; cat /mnt/seed/network-config; echo "BACKROOM-NETWORK-CONFIG-END"
  # (mac, address) pairs from the version 2 network config vmd writes.
  awk '/macaddress:/ { gsub(/[" ]/, "", $2); mac = $2 }
       /^ *- *"?[0-9a-f.:]+\/[0-9]+"? *$/ { a = $2; gsub(/"/, "", a); print mac, a }' \
      /mnt/seed/network-config >/tmp/addrs 2>/dev/null || true
  while read -r mac addr; do
    for n in /sys/class/net/*; do
      if [ "$(cat "$n/address")" = "$mac" ]; then
        ifc=${n##*/}
        ip link set "$ifc" up
        ip addr add "$addr" dev "$ifc" && echo "BACKROOM-ADDRESS $ifc $addr"
      fi
    done
  done </tmp/addrs
  httpd -p 8080 -h /www && echo "BACKROOM-LISTENING tcp/8080"
else
  echo "BACKROOM-SEED none"
fi

echo "BACKROOM-GUEST-READY marker=${marker:-none}"
while true; do sleep 3600; done
